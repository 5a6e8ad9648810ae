"""The retrain job registry (app/jobs.py) on a real demo registry: each job a real process;
shutdown terminates a running one and fails its job; only the last finished jobs are kept; a
process that ends without its result fails its job with the last line of its stderr; a job
process runs below the server's CPU priority."""

import asyncio
import logging
import os
import shutil
import signal
from pathlib import Path

import pytest

from app.errors import RetrainRunning, UnknownJob
from app.jobs import NICENESS, Job, RetrainJobs
from app.settings import Settings

JOB_SECONDS = 120


async def until_finished(job: Job) -> None:
    async with asyncio.timeout(JOB_SECONDS):
        while not job.finished:
            await asyncio.sleep(0.05)


def test_shutdown_terminates_a_running_job_and_fails_it(settings: Settings) -> None:
    async def scenario() -> tuple[Job, int | None]:
        jobs = RetrainJobs(settings)
        job = await jobs.start("iris", None, "promote")
        async with asyncio.timeout(JOB_SECONDS):
            while job.status == "queued":
                await asyncio.sleep(0.01)
        assert job.status == "running"
        process = job.process
        assert process is not None
        await jobs.close()
        return job, process.returncode

    job, returncode = asyncio.run(scenario())
    assert job.status == "failed"
    assert job.error is not None
    assert (job.error.code, job.error.message) == ("server_shut_down", "server shut down")
    assert returncode is not None
    assert returncode != 0
    assert job.ended is not None
    assert job.result is None


def test_only_the_last_finished_jobs_are_kept(settings: Settings) -> None:
    async def scenario() -> tuple[Job, Job, RetrainJobs]:
        jobs = RetrainJobs(settings, keep_finished=1)
        first = await jobs.start("iris", None, "keep")
        with pytest.raises(RetrainRunning):
            await jobs.start("iris", None, "keep")
        await until_finished(first)
        second = await jobs.start("iris", None, "keep")
        await until_finished(second)
        await jobs.start("wine", None, "keep")  # a third: the oldest finished one is forgotten
        await jobs.close()
        return first, second, jobs

    first, second, jobs = asyncio.run(scenario())
    assert (first.status, second.status) == ("passed", "passed")
    assert first.result is not None
    assert second.result is not None
    assert second.result["version"] == first.result["version"] + 1
    with pytest.raises(UnknownJob):
        jobs.get(first.id)
    assert jobs.get(second.id) is second


def test_the_job_process_retrains_with_this_servers_settings(
    tmp_path: Path, models_dir: Path
) -> None:
    """Settings built in code, not from the environment, still reach the job's process."""
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data", gate_margin=0.25)

    async def scenario() -> Job:
        jobs = RetrainJobs(settings)
        job = await jobs.start("iris", None, "keep")
        await until_finished(job)
        await jobs.close()
        return job

    job = asyncio.run(scenario())
    assert job.status == "passed"
    assert job.result is not None
    assert job.result["decision"]["margin"] == 0.25
    assert (models_dir / "iris" / str(job.result["version"]) / "metadata.json").is_file()


def test_the_job_process_gets_neither_the_admin_token_nor_the_workers_metrics_dir(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under --workers, PROMETHEUS_MULTIPROC_DIR names the live workers' metric files: a metric
    the job made would land among them, counted in every scrape."""
    live = tmp_path / "live-metrics"
    live.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(live))
    monkeypatch.setenv("STEWARD_ADMIN_TOKEN", "s3cret-admin-token-0123456789")
    monkeypatch.setenv("STEWARD_GIVEN_THROUGH", "yes")  # the rest of the environment is

    async def scenario() -> tuple[Job, dict[str, str]]:
        jobs = RetrainJobs(settings)
        job = await jobs.start("iris", None, "keep")
        process = await until_running(job)
        os.kill(process.pid, signal.SIGSTOP)  # held while its environment is read
        try:
            pairs = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
        finally:
            os.kill(process.pid, signal.SIGCONT)
        await until_finished(job)
        await jobs.close()
        return job, dict(p.decode().split("=", 1) for p in pairs if p)

    job, environment = asyncio.run(scenario())
    assert job.status == "passed"
    assert "PROMETHEUS_MULTIPROC_DIR" not in environment
    assert "STEWARD_ADMIN_TOKEN" not in environment
    assert environment["STEWARD_GIVEN_THROUGH"] == "yes"
    assert list(live.iterdir()) == []


async def until_running(job: Job) -> asyncio.subprocess.Process:
    async with asyncio.timeout(JOB_SECONDS):
        while job.status == "queued":
            await asyncio.sleep(0.01)
    assert job.status == "running"
    assert job.process is not None
    return job.process


def test_a_process_that_ends_without_its_result_fails_with_its_last_stderr_line(
    settings: Settings, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real crash: the folder the process writes its result to disappears while it runs (as
    a /tmp cleaner may do to a long-running server's), so it dies on a traceback."""

    async def scenario() -> tuple[Job, Path]:
        jobs = RetrainJobs(settings)
        job = await jobs.start("iris", None, "keep")
        process = await until_running(job)
        os.kill(process.pid, signal.SIGSTOP)  # held before it could write anything
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        result = Path(next(a.decode() for a in argv if a.endswith(b".json")))
        assert not result.exists()
        shutil.rmtree(result.parent)
        os.kill(process.pid, signal.SIGCONT)
        await until_finished(job)
        await jobs.close()
        return job, result

    with caplog.at_level(logging.WARNING, logger="app.jobs"):
        job, result = asyncio.run(scenario())
    assert job.status == "failed"
    assert job.result is None
    assert job.error is not None
    assert job.error.code == "retrain_failed"
    partial = result.with_suffix(".partial")
    assert job.error.message == (
        "the retraining process ended (1) with no result: FileNotFoundError: [Errno 2] No such "
        f"file or directory: '{partial}'"
    )
    [record] = caplog.records
    assert record.levelname == "WARNING"
    logged = record.getMessage()
    assert logged.startswith(f"retrain job {job.id} of iris: the retraining process ended (1)")
    assert "Traceback (most recent call last):" in logged
    assert logged.endswith(f"FileNotFoundError: [Errno 2] No such file or directory: '{partial}'")
    # The version it fitted was saved whole before the result could not be: a version folder.
    assert (models_dir / "iris" / "2" / "metadata.json").is_file()


def test_a_job_process_runs_below_the_servers_cpu_priority(settings: Settings) -> None:
    async def scenario() -> tuple[int, Job]:
        jobs = RetrainJobs(settings)
        job = await jobs.start("iris", None, "keep")
        process = await until_running(job)
        nice = os.getpriority(os.PRIO_PROCESS, process.pid)
        await until_finished(job)
        await jobs.close()
        return nice, job

    nice, job = asyncio.run(scenario())
    assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)
    assert job.status == "passed"
