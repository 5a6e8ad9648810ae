"""Retrain jobs: each retraining the admin API starts runs as its own process
(``python -m app.retrain_job``), never on the serving event loop nor in the server's process,
so predictions keep answering while it fits. No HTTP here.

The registry holds the jobs in memory: at most one running per model, the last
``KEEP_FINISHED`` finished ones, ids random and unguessable (a job's answer names versions and
scores). A job's state: queued (the process starting), running, then passed, refused (the gate
kept the version unaliased) or failed (the error's code and one line). On shutdown the running
processes are terminated and their jobs failed, "server shut down".

A job process runs NICENESS below the server's CPU priority: where it shares a core with the
server, predictions come first (docs/performance.md, "Predictions during a retrain"). A
process that ends without its result (a crash before it could write one) fails its job with
the last line of its stderr; the server logs the end of that stderr at WARNING.
"""

import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.errors import RetrainRunning, UnknownJob
from app.retraining import Then
from app.settings import Settings

JobStatus = Literal["queued", "running", "passed", "refused", "failed"]
KEEP_FINISHED = 100
STOP_SECONDS = 5.0  # from SIGTERM to SIGKILL on shutdown
JOB_ID_LENGTH = 32  # uuid4 hex
# The settings a retraining reads, handed to its process; the admin token is not among them.
_HANDED_OVER = (
    "retrain_holdout_seconds",
    "gate_metric",
    "gate_margin",
    "gate_min_rows",
    "input_range_multiple",
    "training_copy_max_bytes",
    "search_seconds",
    "search_folds",
    "allow_pickle",  # a job loads production and writes its version as the server would
    "skops_trusted_types",
)
# The admin token is not the job's business; under --workers, prometheus-client would write a
# metric the job made into the live workers' folder (app/cli/workers.py), counted in /metrics.
_WITHHELD = ("STEWARD_ADMIN_TOKEN", "STEWARD_ADMIN_TOKEN_FILE", "PROMETHEUS_MULTIPROC_DIR")
NICENESS = 10  # added to the server's nice value for a job process (at most 19)
STDERR_TAIL_BYTES = 2048  # the end of a job process's stderr, kept for a failure without result
LAST_LINE_CHARS = 300

logger = logging.getLogger(__name__)


class JobError(BaseModel):
    code: str
    message: str = Field(description="One line.")


class JobView(BaseModel):
    """A retrain job as the admin API shows it."""

    job: str = Field(description="The job's id.")
    model: str
    then: Then = Field(description="What to do with a version that passes the gate.")
    since: datetime | None
    status: JobStatus
    started: datetime
    ended: datetime | None
    progress: str | None = Field(description="The job's latest progress line.")
    result: dict[str, Any] | None = Field(
        description="passed or refused: version, decision (the gate's table), data, aliased."
    )
    error: JobError | None = Field(description="failed: the error's code and one line.")


@dataclass
class Job:
    """One retraining, as its process reports it."""

    id: str
    model: str
    then: Then
    since: datetime | None
    search: bool = False  # --search: the recipe's hyperparameters searched first
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: JobStatus = "queued"
    ended: datetime | None = None
    progress: str | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    process: asyncio.subprocess.Process | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("passed", "refused", "failed")

    def view(self) -> JobView:
        return JobView(
            job=self.id,
            model=self.model,
            then=self.then,
            since=self.since,
            status=self.status,
            started=self.started,
            ended=self.ended,
            progress=self.progress,
            result=self.result,
            error=self.error,
        )

    def fail(self, code: str, message: str) -> None:
        self.status, self.error, self.ended = "failed", JobError(code=code, message=message), _now()


def _now() -> datetime:
    return datetime.now(UTC)


class RetrainJobs:
    """The retrain jobs of one server: started here, watched by a task each on the loop."""

    def __init__(self, settings: Settings, keep_finished: int = KEEP_FINISHED) -> None:
        self._settings = settings
        self._keep = keep_finished
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._folder = tempfile.TemporaryDirectory(prefix="steward-jobs-")

    def get(self, job_id: str) -> Job:
        """The job with this id; UnknownJob, without repeating the id, otherwise."""
        job = self._jobs.get(job_id) if len(job_id) == JOB_ID_LENGTH else None
        if job is None:
            raise UnknownJob(
                "no such job",
                [{"field": "id", "message": "not a job of this server (ids are kept in memory)"}],
            )
        return job

    async def start(
        self, model: str, since: datetime | None, then: Then, search: bool = False
    ) -> Job:
        """Start retraining ``model`` in its own process; RetrainRunning if one runs for it."""
        running = next(
            (j for j in self._jobs.values() if j.model == model and not j.finished), None
        )
        if running is not None:
            raise RetrainRunning(
                f"a retrain job for this model is running: {running.id}",
                [{"field": "job", "message": running.id}],
                model=model,
            )
        job = Job(id=uuid.uuid4().hex, model=model, then=then, since=since, search=search)
        self._jobs[job.id] = job
        self._forget_oldest()
        task = asyncio.create_task(self._watch(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def close(self) -> None:
        """Terminate the running processes (SIGTERM, then SIGKILL), their jobs failed."""
        for job in self._jobs.values():
            if not job.finished:
                job.fail("server_shut_down", "server shut down")
                if job.process is not None and job.process.returncode is None:
                    job.process.terminate()
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_SECONDS)
            except TimeoutError:
                task.cancel()
        self._folder.cleanup()

    async def _watch(self, job: Job) -> None:
        """Run the job; whatever goes wrong here fails it, never leaves it running (its model
        would refuse every other retrain until a restart)."""
        try:
            await self._run(job)
        except Exception:
            logger.exception("retrain job %s of %s: following it failed", job.id, job.model)
            if job.process is not None and job.process.returncode is None:
                job.process.kill()
            if not job.finished:
                job.fail("retrain_failed", "the server could not follow the retraining process")

    async def _run(self, job: Job) -> None:
        folder = Path(self._folder.name)
        folder.mkdir(exist_ok=True)  # a /tmp cleaner may have removed it on a long-lived server
        result_file = folder / f"{job.id}.json"
        argv = [sys.executable, "-m", "app.retrain_job", job.model, str(result_file)]
        argv += ["--then", job.then] + (["--since", job.since.isoformat()] if job.since else [])
        argv += ["--search"] if job.search else []
        argv += ["--nice", str(_job_nice())]
        try:
            job.process = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
                env=self._environment(),
            )
        except OSError as exc:
            job.fail("retrain_failed", f"could not start the retraining process: {exc}")
            return
        _lower_priority(job.process.pid)
        if job.finished:  # shut down while the process started
            job.process.terminate()
        else:
            job.status = "running"
        try:
            stderr = await self._follow(job, job.process)
        finally:
            if job.process.returncode is None:
                job.process.kill()
                await job.process.wait()
        if not job.finished:
            self._conclude(job, result_file, job.process.returncode, stderr)

    async def _follow(self, job: Job, process: asyncio.subprocess.Process) -> str:
        """Keep the job's last progress line until the process ends; the end of its stderr
        (both pipes read at once: a process blocked on a full one would never end)."""
        assert process.stdout is not None
        assert process.stderr is not None
        _, stderr = await asyncio.gather(_progress(job, process.stdout), _tail(process.stderr))
        await process.wait()
        return stderr

    def _conclude(self, job: Job, result_file: Path, returncode: int | None, stderr: str) -> None:
        try:
            outcome: dict[str, Any] = json.loads(result_file.read_text())
        except (OSError, ValueError):
            ended = f"the retraining process ended ({returncode}) with no result"
            last = _last_line(stderr)
            if last:
                logger.warning(
                    "retrain job %s of %s: %s; the end of its stderr:\n%s",
                    job.id, job.model, ended, stderr.rstrip(),
                )  # fmt: skip
            job.fail("retrain_failed", f"{ended}: {last}" if last else ended)
            return
        finally:
            result_file.unlink(missing_ok=True)
        if outcome["status"] == "failed":
            if outcome["error"]["code"] == "retrain_failed" and stderr.strip():
                # not one of Steward's errors: its traceback, kept out of the job, is logged
                logger.warning(
                    "retrain job %s of %s failed; the end of its stderr:\n%s",
                    job.id, job.model, stderr.rstrip(),
                )  # fmt: skip
            job.fail(outcome["error"]["code"], outcome["error"]["message"])
            return
        job.status, job.result, job.ended = outcome.pop("status"), outcome, _now()

    def _environment(self) -> dict[str, str]:
        """The server's environment, with the settings this server runs on made explicit (a
        test's or a caller's Settings need not come from the environment)."""
        env = {k: v for k, v in os.environ.items() if k not in _WITHHELD}
        env["STEWARD_MODELS_DIR"] = str(self._settings.models_dir.resolve())
        env["STEWARD_DATABASE_URL"] = self._settings.store_url
        for name in _HANDED_OVER:
            value = getattr(self._settings, name)
            env[f"STEWARD_{name.upper()}"] = (
                ",".join(value) if isinstance(value, list) else str(value)
            )
        return env

    def _forget_oldest(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.finished]
        for job_id in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[job_id]


def _job_nice() -> int:
    """A job process's nice value: the server's plus NICENESS."""
    return min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)


def _lower_priority(pid: int) -> None:
    """Set the job process's nice value from outside at once (the process sets it too, on
    its threads to come: see app/retrain_job.py)."""
    with contextlib.suppress(OSError):  # it may have ended already
        os.setpriority(os.PRIO_PROCESS, pid, _job_nice())


async def _progress(job: Job, stdout: asyncio.StreamReader) -> None:
    """The job's latest progress line: the last non-empty line of the process's stdout."""
    async for raw in stdout:
        line = raw.decode(errors="replace").strip()
        if line:
            job.progress = line[:500]


async def _tail(stream: asyncio.StreamReader) -> str:
    """The last STDERR_TAIL_BYTES of ``stream``, read to its end."""
    tail = b""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-STDERR_TAIL_BYTES:]
    return tail.decode(errors="replace")


def _last_line(text: str) -> str:
    """The last non-empty line of ``text``, stripped and cut to LAST_LINE_CHARS ("" if none)."""
    lines = (line.strip() for line in reversed(text.splitlines()))
    return next((line for line in lines if line), "")[:LAST_LINE_CHARS]
