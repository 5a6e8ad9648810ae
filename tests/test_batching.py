"""The adaptive batcher on its own: who shares a call, who gets which result, what fails."""

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from app.batching import Batcher, BatchStats


class Model:
    """A stand-in model: ten times each row; fails on negative rows; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, key: str, rows: list[int]) -> list[int]:
        self.calls.append((key, list(rows)))
        self.threads.append(threading.current_thread())
        if any(row < 0 for row in rows):
            raise ValueError("negative row")
        return [row * 10 for row in rows]


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


async def gather(batcher: Batcher[str, int, int], *jobs: tuple[str, list[int]]) -> list[Any]:
    """Submit every job in the same loop turn, as concurrent requests do; results in order."""
    try:
        return await asyncio.gather(
            *(batcher.run(key, rows) for key, rows in jobs), return_exceptions=True
        )
    finally:
        await batcher.close()


def test_concurrent_requests_share_one_call_and_get_their_own_rows() -> None:
    model, stats = Model(), []
    batcher = Batcher(model, max_rows=100, max_wait=1.0, on_batch=lambda k, s: stats.append(s))
    results = run(gather(batcher, ("m", [1]), ("m", [2, 3]), ("m", [4]), ("m", [5, 6, 7])))
    assert results == [[10], [20, 30], [40], [50, 60, 70]]
    assert model.calls == [("m", [1, 2, 3, 4, 5, 6, 7])]
    assert [(s.requests, s.rows) for s in stats] == [(4, 7)]


def test_a_lone_request_never_waits_for_company() -> None:
    """With an hour of max_wait, a single request still completes at once (no fixed wait)."""
    model = Model()
    batcher = Batcher(model, max_rows=100, max_wait=3600)
    assert run(gather(batcher, ("m", [1]))) == [[10]]
    assert model.calls == [("m", [1])]


def test_batches_stop_at_max_rows_and_a_large_request_runs_alone() -> None:
    model = Model()
    batcher = Batcher(model, max_rows=4, max_wait=1.0)
    jobs = [("m", [i]) for i in range(6)] + [("m", [7, 8, 9, 10, 11])]
    results = run(gather(batcher, *jobs))
    assert results == [[0], [10], [20], [30], [40], [50], [70, 80, 90, 100, 110]]
    assert [rows for _, rows in model.calls] == [[0, 1, 2, 3], [4, 5], [7, 8, 9, 10, 11]]


def test_different_models_are_never_mixed() -> None:
    model = Model()
    batcher = Batcher(model, max_rows=100, max_wait=1.0)
    results = run(gather(batcher, ("a", [1]), ("b", [2]), ("a", [3]), ("b", [4]), ("a", [5])))
    assert results == [[10], [20], [30], [40], [50]]
    assert sorted(model.calls) == [("a", [1, 3, 5]), ("b", [2, 4])]


def test_a_failing_request_fails_alone() -> None:
    model, stats = Model(), []
    batcher = Batcher(model, max_rows=100, max_wait=1.0, on_batch=lambda k, s: stats.append(s))
    ok, bad, also_ok = run(gather(batcher, ("m", [1]), ("m", [-1, 2]), ("m", [3])))
    assert ok == [10]
    assert also_ok == [30]
    assert isinstance(bad, ValueError)
    # The shared call failed; each request was then run on its own.
    assert [rows for _, rows in model.calls] == [[1, -1, 2, 3], [1], [-1, 2], [3]]
    assert [(s.requests, s.rows) for s in stats] == [(1, 1), (1, 1)]


def test_slow_models_run_in_a_worker_thread_fast_ones_on_the_loop() -> None:
    loop_thread = threading.current_thread()  # asyncio.run runs the loop on this thread

    async def three_rounds(batcher: Batcher[str, int, int]) -> None:
        for i in range(3):
            assert await batcher.run("m", [i]) == [i * 10]
        await batcher.close()

    fast = Model()
    run(three_rounds(Batcher(fast, max_rows=10, max_wait=0, inline_max=60)))
    # Not yet measured: a worker thread; measured fast: the loop thread.
    assert fast.threads[0] is not loop_thread
    assert fast.threads[1:] == [loop_thread, loop_thread]

    slow = Model()
    run(three_rounds(Batcher(slow, max_rows=10, max_wait=0, inline_max=0)))
    assert loop_thread not in slow.threads


def test_a_request_whose_client_left_is_skipped() -> None:
    model = Model()
    batcher: Batcher[str, int, int] = Batcher(model, max_rows=100, max_wait=1.0)

    async def scenario() -> list[int]:
        gone = asyncio.ensure_future(batcher.run("m", [1]))
        staying = asyncio.ensure_future(batcher.run("m", [2]))
        await asyncio.sleep(0)  # both queued
        gone.cancel()
        result = await staying
        await batcher.close()
        return result

    assert run(scenario()) == [20]
    assert model.calls == [("m", [2])]


def test_close_fails_what_is_still_queued() -> None:
    model = Model()
    batcher: Batcher[str, int, int] = Batcher(model, max_rows=100, max_wait=1.0)

    async def scenario() -> None:
        pending = asyncio.ensure_future(batcher.run("m", [1]))
        await asyncio.sleep(0)  # queued; the worker has not run yet
        await batcher.close()
        with pytest.raises(RuntimeError, match="shutting down"):
            await pending

    run(scenario())
    assert model.calls == []


class SlowModel(Model):
    """A model whose every call takes at least ``CALL_SECONDS``."""

    CALL_SECONDS = 0.02

    def __call__(self, key: str, rows: list[int]) -> list[int]:
        time.sleep(self.CALL_SECONDS)
        return super().__call__(key, rows)


def test_batch_stats_are_counted_per_call_with_the_call_time() -> None:
    stats: list[BatchStats] = []
    model = SlowModel()
    batcher = Batcher(model, max_rows=2, max_wait=1.0, on_batch=lambda k, s: stats.append(s))
    run(gather(batcher, ("m", [1]), ("m", [2]), ("m", [3])))
    assert [(s.requests, s.rows) for s in stats] == [(2, 2), (1, 1)]
    # Each call slept CALL_SECONDS: a stat that did not time the call would be short of it.
    assert [s.seconds >= SlowModel.CALL_SECONDS for s in stats] == [True, True]


def test_a_failure_outside_the_model_call_fails_its_batch_and_the_lane_lives_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def observe(key: str, stats: BatchStats) -> None:
        if stats.rows == 2:
            raise RuntimeError("metrics broke on 'row-value-51'")  # as scikit-learn's quote rows

    batcher = Batcher(Model(), max_rows=100, max_wait=1.0, on_batch=observe)

    async def scenario() -> tuple[list[Any], list[int]]:
        failed = list(
            await asyncio.gather(
                batcher.run("m", [1]), batcher.run("m", [2]), return_exceptions=True
            )
        )
        after = await batcher.run("m", [3])  # the same lane still serves
        await batcher.close()
        return failed, after

    caplog.set_level(logging.DEBUG, logger="app.batching")
    failed, after = run(scenario())
    assert [str(e) for e in failed] == ["metrics broke on 'row-value-51'"] * 2
    assert after == [30]
    shown = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert [r.getMessage() for r in shown] == [
        "batch for m failed outside the model call: RuntimeError"
    ]
    assert not [r for r in shown if r.exc_info]  # a traceback would quote the text
    # The text, at debug only.
    (debug,) = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert "row-value-51" in caplog.handler.format(debug)


class Version:
    """A lane key as the server's are: a model version object, weakly referenceable."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name


def test_a_dropped_lane_runs_what_is_queued_then_its_worker_ends() -> None:
    """Dropped (from another thread, as a registry hook may) while a call runs: the requests
    queued behind it are still answered, then the lane's worker ends. A request that took the
    key before the drop and arrives after it is answered on a lane of its own, which ends too:
    no lane stays behind for a dropped key."""
    model, started, release = Model(), threading.Event(), threading.Event()
    key = Version("m")

    def blocking(version: Version, rows: list[int]) -> list[int]:
        started.set()
        release.wait(timeout=10)
        return model(str(version), rows)

    batcher: Batcher[Version, int, int] = Batcher(blocking, max_rows=100, max_wait=0)

    def workers() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "batcher:m"]

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(batcher.run(key, [1]))
        await asyncio.to_thread(started.wait, 10)  # the first call runs in a worker thread
        (worker,) = workers()
        queued = [asyncio.ensure_future(batcher.run(key, [row])) for row in (2, 3)]
        await asyncio.sleep(0)  # both queued behind the running call
        await asyncio.to_thread(batcher.drop, key)
        assert batcher.keys == []
        release.set()
        results = await asyncio.gather(first, *queued)
        await asyncio.wait_for(worker, timeout=10)  # ends once what was queued has run
        results.append(await batcher.run(key, [4]))  # a straggler
        assert batcher.keys == []
        for straggler in workers():  # its lane's worker ends once it has run
            await asyncio.wait_for(straggler, timeout=10)
        assert workers() == []
        await batcher.close()
        return results

    assert run(scenario()) == [[10], [20], [30], [40]]
    assert model.calls == [("m", [1]), ("m", [2, 3]), ("m", [4])]
