"""The retrain job registry (app/jobs.py) on a real demo registry: each job a real process;
shutdown terminates a running one and fails its job; only the last finished jobs are kept."""

import asyncio
from pathlib import Path

import pytest

from app.errors import RetrainRunning, UnknownJob
from app.jobs import Job, RetrainJobs
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
