"""Overload and slow clients: beyond the concurrency limit a fast 503, a trickled body cut off.

The middleware alone on tiny ASGI apps (deterministic: a request is held on an event), then a
real `steward serve` under concurrent load and raw-socket trickling clients.
"""

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from helpers import IRIS_SETOSA, wait_until
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from server import STEWARD, Server, free_port, serving
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.body_timeout import BodyTimeout
from app.api.overload import ConcurrencyLimit
from app.metrics import Metrics

# ---------------------------------------------------------------- the middleware, in process


class Held:
    """An app that answers 200 with the body it read, /predict only once ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] in ("/predict", "/predict/iris"):
            self.entered += 1
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def _scope(path: str) -> Scope:
    return {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}


async def _call(app: ASGIApp, path: str, chunks: list[bytes] | None = None) -> list[Message]:
    """The messages ``app`` sends for a request whose body is ``chunks`` (None: a body that
    never arrives)."""
    pending = list(chunks) if chunks is not None else None
    sent: list[Message] = []

    async def receive() -> Message:
        if pending is None:
            await asyncio.Event().wait()  # never
        assert pending is not None
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await asyncio.Event().wait()  # a disconnect that never comes
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(_scope(path), receive, send)
    return sent


def _status(sent: list[Message]) -> int:
    status: int = sent[0]["status"]
    return status


def _error(sent: list[Message]) -> tuple[dict[bytes, bytes], Any]:
    return dict(sent[0]["headers"]), orjson.loads(sent[1]["body"])["error"]


def _refused(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "steward_http_refused_requests_total", {"reason": reason}
    )


def test_beyond_the_limit_a_request_gets_503_at_once_and_health_is_never_limited() -> None:
    async def scenario() -> None:
        metrics = Metrics(CollectorRegistry())
        held = Held()
        app = ConcurrencyLimit(held, limit=2, metrics=metrics)
        first = asyncio.create_task(_call(app, "/predict/iris", [b"a"]))
        second = asyncio.create_task(_call(app, "/predict", [b"b"]))
        while held.entered < 2:
            await asyncio.sleep(0)
        refused = await asyncio.wait_for(_call(app, "/predict/iris", [b"c"]), 10)
        assert _status(refused) == 503
        headers, error = _error(refused)
        assert headers[b"retry-after"] == b"1"
        assert error["code"] == "overloaded"
        assert "2 requests in flight" in error["message"]
        feedback = await asyncio.wait_for(_call(app, "/feedback", [b"d"]), 10)
        assert _status(feedback) == 503
        # Not limited: health, metrics, other routes, and paths that only look alike.
        for path in ("/healthz", "/readyz", "/metrics", "/models/iris", "/predictions"):
            assert _status(await asyncio.wait_for(_call(app, path, [b""]), 10)) == 200
        held.release.set()
        assert [m[1]["body"] for m in await asyncio.gather(first, second)] == [b"a", b"b"]
        assert _status(await _call(app, "/predict/iris", [b"e"])) == 200  # slots given back
        assert _refused(metrics, "overloaded") == 2
        assert _refused(metrics, "body_timeout") == 0

    asyncio.run(scenario())


def test_a_request_takes_its_slot_only_once_its_body_has_arrived() -> None:
    async def scenario() -> None:
        metrics = Metrics(CollectorRegistry())
        held = Held()
        held.release.set()
        app = ConcurrencyLimit(held, limit=1, metrics=metrics)
        trickling = [asyncio.create_task(_call(app, "/predict/iris")) for _ in range(3)]
        await asyncio.sleep(0.05)
        answered = await asyncio.wait_for(_call(app, "/predict/iris", [b"x", b"y"]), 10)
        assert _status(answered) == 200
        assert answered[1]["body"] == b"xy"  # the body read ahead is handed on whole
        assert _refused(metrics, "overloaded") == 0
        for task in trickling:
            task.cancel()
        await asyncio.gather(*trickling, return_exceptions=True)

    asyncio.run(scenario())


def test_a_body_slower_than_its_timeout_gets_408_and_the_connection_closes() -> None:
    async def scenario() -> None:
        metrics = Metrics(CollectorRegistry())
        app = BodyTimeout(ConcurrencyLimit(Held(), 4, metrics), seconds=0.2, metrics=metrics)
        sent = await asyncio.wait_for(_call(app, "/predict/iris"), 10)
        assert _status(sent) == 408
        headers, error = _error(sent)
        assert headers[b"connection"] == b"close"
        assert error["code"] == "request_timeout"
        assert "0.2 seconds" in error["message"]
        assert _refused(metrics, "body_timeout") == 1
        held = Held()
        held.release.set()
        in_time = BodyTimeout(held, seconds=10, metrics=metrics)
        assert (await _call(in_time, "/predict/iris", [b"1", b"2"]))[1]["body"] == b"12"
        assert _refused(metrics, "body_timeout") == 1

    asyncio.run(scenario())


# ---------------------------------------------------------------- a real `steward serve`


def _serve(tmp_path: Path, models: Path, **settings: str) -> Iterator[Server]:
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
        **{f"STEWARD_{key.upper()}": value for key, value in settings.items()},
    }
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    with serving(argv, port=port, env=env, log=tmp_path / "server.log", ready="/readyz") as served:
        yield served


@pytest.fixture
def limited(tmp_path: Path, demo_models: Path) -> Iterator[Server]:
    """Two requests at once at most; headers have 1 second to arrive, a body 2 seconds."""
    yield from _serve(
        tmp_path,
        demo_models,
        max_concurrency="2",
        body_timeout_seconds="2",
        header_timeout_seconds="1",
    )


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx2.get(url + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_a_real_server_under_concurrent_load_sheds_with_503_and_stays_ready(
    limited: Server,
) -> None:
    body = orjson.dumps({"instances": [IRIS_SETOSA] * 1000})
    statuses: list[int] = []
    lock = threading.Lock()

    def client(start: threading.Barrier) -> None:
        with httpx2.Client(base_url=limited.url, timeout=30) as http:
            start.wait()
            for _ in range(3):
                response = http.post(
                    "/predict/iris", content=body, headers={"Content-Type": "application/json"}
                )
                if response.status_code == 200:
                    assert len(response.json()["predictions"]) == 1000
                else:
                    assert response.status_code == 503, response.text
                    assert response.json()["error"]["code"] == "overloaded"
                    assert response.headers["Retry-After"] == "1"
                with lock:
                    statuses.append(response.status_code)

    for _ in range(10):  # bounded: until the limit was met at least once
        start = threading.Barrier(12)
        threads = [threading.Thread(target=client, args=(start,)) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if 503 in statuses:
            break
    assert len(statuses) % 36 == 0  # every client's every request was answered
    shed = statuses.count(503)
    assert shed > 0
    assert statuses.count(200) >= 2
    assert httpx2.get(limited.url + "/readyz", timeout=10).status_code == 200
    assert _metric(limited.url, "steward_http_refused_requests_total", reason="overloaded") == shed
    served = _metric(limited.url, "steward_predictions_total", model="iris")
    assert served == 1000 * statuses.count(200)
    assert (
        _metric(limited.url, "steward_http_requests_total", route="/predict/{model}", status="503")
        == shed
    )


def _trickle_headers(content_length: int) -> bytes:
    return (
        "POST /predict/iris HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def _trickle_until_answered(sock: socket.socket, max_bytes: int) -> bytes:
    """Send one byte of body every 0.2 s until the server answers (at most ``max_bytes``);
    everything it sent until it closed the connection."""
    sock.settimeout(0.2)
    for _ in range(max_bytes):
        try:
            sock.sendall(b" ")
        except OSError:  # closed under us: what it sent is read below
            break
        try:
            first = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:  # reset before any answer: nothing was answered
            return b""
        if first:
            return first + _read_to_close(sock)
        break
    return _read_to_close(sock)


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection. A server that closes with
    bytes of ours unread (a trickler's last byte came in after the 408 was written) resets the
    connection instead of closing it (TCP, RFC 1122 4.2.2.13): the answer read before the reset
    is kept (the lost trickling test answer b'': this raised in the client's thread)."""
    sock.settimeout(10)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def test_an_answer_followed_by_a_reset_is_read_whole() -> None:
    """The race the trickling test lost, made certain: a server answers, then closes with a
    byte of the client's unread, so the client's kernel gets the answer, then a reset."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
        with client, server:
            client.sendall(b"a")
            assert server.recv(1) == b"a"
            client.sendall(b"b")  # never read by the server
            assert wait_until(lambda: _unread(server) == 1, seconds=10)
            server.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            server.close()  # with "b" unread: a reset after the answer
            assert _read_to_close(client) == b"HTTP/1.1 408 Request Timeout\r\n\r\n"


def _unread(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue."""
    return len(sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT))


def test_trickling_clients_are_cut_off_and_a_normal_client_is_served_meanwhile(
    limited: Server,
) -> None:
    port = int(limited.url.rsplit(":", 1)[1])
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    answers: list[bytes] = [b""] * len(sockets)
    try:
        for sock in sockets:
            sock.sendall(_trickle_headers(200))

        def trickle(index: int) -> None:
            answers[index] = _trickle_until_answered(sockets[index], 150)

        threads = [threading.Thread(target=trickle, args=(i,)) for i in range(len(sockets))]
        for thread in threads:
            thread.start()
        # Four trickling requests, a limit of two: a slot is taken only once a body is whole.
        with httpx2.Client(base_url=limited.url, timeout=10) as http:
            for _ in range(5):
                response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
                assert response.status_code == 200, response.text
        for thread in threads:
            thread.join()
    finally:
        for sock in sockets:
            sock.close()
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert b"connection: close" in head.lower()
        assert orjson.loads(body)["error"]["code"] == "request_timeout"
    assert _metric(limited.url, "steward_http_refused_requests_total", reason="body_timeout") == 4
    assert _metric(limited.url, "steward_http_refused_requests_total", reason="overloaded") == 0
    assert httpx2.get(limited.url + "/readyz", timeout=10).status_code == 200


def test_stalled_or_trickled_headers_are_cut_off_and_a_normal_client_is_served_meanwhile(
    limited: Server,
) -> None:
    port = int(limited.url.rsplit(":", 1)[1])
    head = _trickle_headers(200)
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(6)]
    answers: list[bytes] = [b""] * len(sockets)
    try:
        for sock in sockets[:3]:
            sock.sendall(head[:30])  # half the headers, then nothing
        sockets[3].sendall(b"")  # connected, nothing sent at all

        def trickle(index: int) -> None:  # the headers a byte at a time
            sock = sockets[index]
            sock.settimeout(0.2)
            for byte in head:
                try:
                    sock.sendall(bytes([byte]))
                    if first := sock.recv(65536):
                        answers[index] = first + _read_to_close(sock)
                        return
                except TimeoutError:
                    continue
                except OSError:
                    break
            answers[index] = _read_to_close(sock)

        threads = [threading.Thread(target=trickle, args=(i,)) for i in (4, 5)]
        for thread in threads:
            thread.start()
        with httpx2.Client(base_url=limited.url, timeout=10) as http:
            for _ in range(5):
                response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
                assert response.status_code == 200, response.text
        for index in range(4):
            answers[index] = _read_to_close(sockets[index])
        for thread in threads:
            thread.join()
    finally:
        for sock in sockets:
            sock.close()
    for answer in answers:
        head_sent, _, body = answer.partition(b"\r\n\r\n")
        assert head_sent.startswith(b"HTTP/1.1 408"), answer
        assert b"connection: close" in head_sent.lower()
        assert orjson.loads(body)["error"]["code"] == "request_timeout"
    # Cut off before any request began: nothing reached the app, nothing was counted as one.
    assert _metric(limited.url, "steward_http_refused_requests_total") == 0
    assert httpx2.get(limited.url + "/readyz", timeout=10).status_code == 200


def test_a_kept_alive_connection_serves_requests_one_after_another(limited: Server) -> None:
    """The header deadline is per request: a connection used longer than it is not cut."""
    port = int(limited.url.rsplit(":", 1)[1])
    body = orjson.dumps({"instances": [IRIS_SETOSA]})
    request = _trickle_headers(len(body)) + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(request)
            answer = b""
            while b"setosa" not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            time.sleep(0.7)  # 3 x 0.7 s: longer than the 1 s header deadline
