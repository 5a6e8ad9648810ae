"""Structured logs: a real `steward serve` writes one JSON object a line; every line of a request
names its id (the client's X-Request-ID when safe, else a new one, returned in the response);
no feature value or label appears in any line."""

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import ADMIN_AUTH, ADMIN_TOKEN, metric, wait_until
from server import STEWARD, Server, free_port, serving
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from app import lifecycle, logs
from app.aliases import set_alias
from app.artifacts import read_metadata, save_version
from app.main import create_app
from app.services import Services
from app.settings import Settings
from app.training import train_demo

KEY = "log-test-key-0123456789"
# Values no line may carry: a feature value of a served row, one of a refused row (echoed by no
# error either), and a ground truth.
SERVED_VALUE = 5.123456789
REFUSED_VALUE = "FEATURE-VALUE-7f3a9c"
LABEL = "versicolor"
ROW = {
    "sepal_length_cm": SERVED_VALUE,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}
HOSTILE_IDS = [
    b"<script>alert(1)</script>",
    b"a" * 129,
    b"id with spaces",
    b"",
    "ünïcode-id".encode(),
    b'quote"-and-brace}',
]
GENERATED = re.compile(r"[0-9a-f]{32}")


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line of the server's output, each parsed as one JSON object (fails otherwise)."""
    lines = log.read_text(encoding="utf-8").splitlines()
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(line, dict) for line in parsed)
    return parsed


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[Server]:
    """A real server (API keys and the admin API on), driven through a scripted sequence by
    the tests below in order; its output is read after it stopped."""
    tmp = tmp_path_factory.mktemp("logs")
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(demo_models),
        "STEWARD_DATA_DIR": str(tmp / "data"),
        "STEWARD_API_KEYS": KEY,
        "STEWARD_ADMIN_TOKEN": ADMIN_TOKEN,
        "STEWARD_RELOAD_INTERVAL_SECONDS": "0",
    }
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    with serving(argv, port=port, env=env, log=tmp / "server.log", ready="/readyz") as server:
        yield server


@pytest.fixture(scope="module")
def answers(run: Server) -> dict[str, httpx2.Response]:
    """The scripted sequence, each request by name; the server stopped afterwards."""
    auth = {"X-API-Key": KEY}
    body = {"instances": [ROW, ROW]}
    done: dict[str, httpx2.Response] = {}
    with httpx2.Client(base_url=run.url, timeout=30) as http:
        done["predict"] = http.post(
            "/predict/iris", json=body, headers=auth | {"X-Request-ID": "trace-0001.a:b"}
        )
        pid = done["predict"].json()["predictions"][0]["id"]
        done["feedback"] = http.post(
            "/feedback",
            json={"prediction_id": pid, "ground_truth": LABEL},
            headers=auth | {"X-Request-ID": "trace-0002"},
        )
        refused_row = {**ROW, "sepal_length_cm": REFUSED_VALUE}
        done["invalid"] = http.post(
            "/predict/iris",
            json={"instances": [refused_row]},
            headers=auth | {"X-Request-ID": "trace-0003"},
        )
        done["no_key"] = http.post("/predict/iris", json=body, headers={"X-Request-ID": "t-4"})
        done["admin"] = http.post(
            "/admin/reload", headers=ADMIN_AUTH | {"X-Request-ID": "trace-0005"}
        )
        done["not_found"] = http.get("/no/such/route", headers={"X-Request-ID": "trace-0006"})
        done["anonymous"] = http.post("/predict/iris", json=body, headers=auth)
        for number, hostile in enumerate(HOSTILE_IDS):
            raw = [(b"x-api-key", KEY.encode()), (b"x-request-id", hostile)]
            done[f"hostile{number}"] = http.post("/predict/iris", json=body, headers=raw)
    run.stop()  # its whole output written (its exit status is tests/test_e2e.py's concern)
    return done


def lines_of(log: Path, request_id: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(log) if line.get("request_id") == request_id]


def access_line(log: Path, request_id: str) -> dict[str, Any]:
    (line,) = [r for r in lines_of(log, request_id) if r["logger"] == logs.ACCESS_LOGGER]
    return line


def test_every_line_is_json_with_level_logger_time(
    run: Server, answers: dict[str, httpx2.Response]
) -> None:
    lines = json_lines(run.log)
    assert len(lines) > len(answers)  # start-up and shutdown lines, and one a request
    assert {"level", "logger", "message", "time", "request_id"} <= set.intersection(
        *(set(line) for line in lines)
    )
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "app.registry", logs.ACCESS_LOGGER} <= loggers
    assert not [line for line in lines if "color_message" in line]


def test_the_access_line_of_a_prediction(run: Server, answers: dict[str, httpx2.Response]) -> None:
    assert answers["predict"].status_code == 200
    assert answers["predict"].headers["x-request-id"] == "trace-0001.a:b"
    line = access_line(run.log, "trace-0001.a:b")
    assert line["latency_ms"] > 0
    assert {k: v for k, v in line.items() if k not in ("latency_ms", "time", "message")} == {
        "level": "INFO",
        "logger": "steward.access",
        "request_id": "trace-0001.a:b",
        "method": "POST",
        "path": "/predict/iris",
        "route": "/predict/{model}",
        "status": 200,
        "client": "127.0.0.1",
        "model": "iris",
        "version": 1,
        "rows": 2,
    }


def test_every_response_carries_its_id(run: Server, answers: dict[str, httpx2.Response]) -> None:
    expected = {
        "feedback": ("trace-0002", 200),
        "invalid": ("trace-0003", 422),
        "no_key": ("t-4", 401),
        "admin": ("trace-0005", 200),
        "not_found": ("trace-0006", 404),
    }
    for name, (request_id, status) in expected.items():
        answer = answers[name]
        assert (answer.headers["x-request-id"], answer.status_code) == (request_id, status), name
        assert access_line(run.log, request_id)["status"] == status, name


def test_lines_logged_while_handling_carry_the_id(
    run: Server, answers: dict[str, httpx2.Response]
) -> None:
    audit = [r for r in lines_of(run.log, "trace-0005") if r["logger"] == "app.api.admin"]
    assert [r["message"] for r in audit] == [
        "admin reload model=None outcome=ok (ok) client=127.0.0.1"
    ]
    # Lines of no request (start-up, shutdown, the batcher's) carry none.
    startup = [r for r in json_lines(run.log) if r["logger"] == "app.registry"]
    assert startup
    assert {r["request_id"] for r in startup} == {None}


def test_hostile_ids_are_replaced(run: Server, answers: dict[str, httpx2.Response]) -> None:
    text = run.log.read_text(encoding="utf-8")
    generated = []
    for number, hostile in enumerate(HOSTILE_IDS):
        answer = answers[f"hostile{number}"]
        assert answer.status_code == 200
        replacement = answer.headers["x-request-id"]
        assert GENERATED.fullmatch(replacement), hostile
        assert access_line(run.log, replacement)["status"] == 200
        generated.append(replacement)
        if hostile:
            sent = hostile.decode()
            assert sent not in text
            assert json.dumps(sent)[1:-1] not in text
    anonymous = answers["anonymous"].headers["x-request-id"]
    assert GENERATED.fullmatch(anonymous)
    assert len({*generated, anonymous}) == len(HOSTILE_IDS) + 1


def test_no_feature_value_or_label_in_any_line(
    run: Server, answers: dict[str, httpx2.Response]
) -> None:
    assert answers["feedback"].json()["status"] == "accepted"
    assert answers["invalid"].status_code == 422
    text = run.log.read_text(encoding="utf-8")
    for value in (str(SERVED_VALUE), REFUSED_VALUE, LABEL, KEY, ADMIN_TOKEN):
        assert value not in text, value


class Recorder(logging.Handler):
    """Keeps the records it handles (after its filters ran)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_unexpected_error_has_the_id_in_answer_and_log(settings: Settings) -> None:
    """Through the app: a route that fails; the 500 is rendered by Starlette's outermost
    middleware, outside ours, and still names the request."""
    app = create_app(settings)

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    handler = Recorder()
    handler.addFilter(logs.RequestIdFilter())
    logging.getLogger("app.api.errors").addHandler(handler)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            answer = client.get("/broken", headers={"X-Request-ID": "trace-500"})
    finally:
        logging.getLogger("app.api.errors").removeHandler(handler)
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
    assert answer.headers["x-request-id"] == "trace-500"
    seen = [(r.getMessage(), r.__dict__["request_id"]) for r in handler.records]
    assert seen == [("unhandled error", "trace-500")]


def test_text_format_for_development(settings: Settings) -> None:
    """STEWARD_LOG_FORMAT=text: the configuration's own formatter and filter, one plain line
    with the request id, '-' outside a request."""
    config = logs.config(settings.model_copy(update={"log_format": "text"}))
    formatter = logging.Formatter(config["formatters"]["steward"]["format"])
    record = logging.LogRecord("app.registry", logging.INFO, __file__, 1, "loaded %s", ("x",), None)
    logs.RequestIdFilter(missing=config["filters"]["request_id"]["missing"]).filter(record)
    assert formatter.format(record).endswith(" INFO app.registry [-]: loaded x")


@pytest.mark.parametrize(
    "path",
    [
        "/predict/iris%0A2026-12-01 INFO steward.access [forged]: POST /predict/x 200",
        "/no-such%0D%0Aforged",
        "/x%E2%80%A8forged%C2%85line%1Eend",  # U+2028, NEL, record separator: splitlines breaks
    ],
)
def test_a_path_cannot_forge_a_text_line(settings: Settings, path: str) -> None:
    """The path arrives percent-decoded: a control character in it is encoded again in the
    access line, so a text log keeps one line per record."""
    config = logs.config(settings.model_copy(update={"log_format": "text"}))
    handler = Recorder()
    handler.addFilter(logs.RequestIdFilter(missing="-"))
    handler.setFormatter(logging.Formatter(config["formatters"]["steward"]["format"]))
    access = logging.getLogger(logs.ACCESS_LOGGER)
    level = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            answer = client.post(path, json={"instances": [ROW]})
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    assert answer.status_code in (404, 405)
    (record,) = handler.records
    line = handler.format(record)
    assert line.splitlines() == [line]
    assert record.__dict__["path"].splitlines() == [record.__dict__["path"]]
    assert "forged" in line  # the rest of the path is kept, encoded


# A value of a shadowed row, which the candidate's transformer quotes in its exception, as
# scikit-learn's encoders do ("Found unknown categories ['secret'] ...").
SHADOWED_VALUE = 6.0123456789
PROBE_LOGGER = "tests.probe"


def probe(features: Any) -> Any:
    """The candidate's first step: logs a line from wherever the model runs (a batcher lane's
    worker thread, the call being slower than the lane's inline bound), and fails on
    SHADOWED_VALUE, quoting it."""
    logging.getLogger(PROBE_LOGGER).info("model called")
    time.sleep(0.01)
    values = np.asarray(features, dtype=float)
    if np.isclose(values, SHADOWED_VALUE).any():
        raise ValueError(f"Found unknown categories [{SHADOWED_VALUE!r}] in column 0")
    return values


def test_a_shadow_failure_logs_no_value_and_model_lines_no_other_request_id(
    settings: Settings,
) -> None:
    """iris v1 serves, v2 shadows it through ``probe``. Three requests with their own ids: the
    lines the model logs name none of them (a lane outlives the request that opened it, and
    serves the others), and the failure of the third request's shadow names the exception's
    type, never the value its text quotes, at info and above."""
    models_dir = settings.models_dir
    train_demo(models_dir)
    data = load_iris()
    candidate = Pipeline(
        [("probe", FunctionTransformer(probe)), ("model", LogisticRegression(max_iter=1000))]
    )
    candidate.fit(data.data, data.target)
    metadata = read_metadata(models_dir, "iris", 1)
    version = save_version(models_dir, metadata, candidate).version
    set_alias(models_dir, "iris", "candidate", version)
    handler = Recorder()
    handler.addFilter(logs.RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        app = create_app(settings.model_copy(update={"reload_interval_seconds": 0}))
        with TestClient(app, raise_server_exceptions=False) as client:
            services: Services = client.app_state["services"]
            lifecycle.set_traffic(models_dir, "iris", "shadow", 100)
            services.watcher.scan()
            shadows = services.predictor.shadows
            for request_id, sepal_length in [
                ("req-first", 5.1),
                ("req-second", 5.0),
                ("req-secret", SHADOWED_VALUE),
            ]:
                row = {**ROW, "sepal_length_cm": sepal_length}
                answer = client.post(
                    "/predict/iris",
                    json={"instances": [row]},
                    headers={"X-Request-ID": request_id},
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["version"] == 1
                assert wait_until(lambda: shadows.pending_rows == 0, seconds=10)
            failures = metric(
                client,
                "steward_shadow_failures_total",
                model="iris",
                version=str(version),
                reason="model_failure",
            )
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert failures == 1
    shown = [handler.format(r) for r in handler.records if r.levelno >= logging.INFO]
    assert [line for line in shown if "ValueError" in line]  # the failure is logged, by type
    assert not [line for line in shown if str(SHADOWED_VALUE) in line]
    model_lines = [r for r in handler.records if r.name == PROBE_LOGGER]
    assert len(model_lines) >= 3  # the load's checks, then each request's shadow
    assert {r.__dict__["request_id"] for r in model_lines} == {None}
