"""One retraining in a process of its own: ``python -m app.retrain_job MODEL RESULT --then X
[--since ISO] [--search]``, started by app/jobs.py for ``POST /admin/models/{model}/retrain``.

The fit is CPU work for seconds to minutes; in its own process it shares neither the server's
event loop nor its GIL, so predictions keep their latency. Settings come from the environment
the server hands over (its registry, its store, its gate, its search). Progress goes to stdout,
one line per advance of each step (app/progress.py's Lines, every tick: ``search: 12/60 fits``);
the outcome goes to RESULT as JSON, written atomically, whatever happened:
``{"status": "passed"|"refused", "version", "decision", "data", "aliased", "search"}`` or
``{"status": "failed", "error": {"code", "message"}}``: a Steward error's one line (at most
MAX_MESSAGE characters), or for any other error its type alone, its traceback on stderr (which
the server logs): its message may quote stored inputs.
"""

import argparse
import contextlib
import json
import os
import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from app.errors import StewardError

ACTOR = "admin-api"  # as app/api/admin.py's: a job is started through the admin API
FAILED_CODE = "retrain_failed"  # an error that is not one of ours: its type, not its code
UNEXPECTED = "unexpected error in the retraining (its traceback is in the server's log)"
MAX_MESSAGE = 300  # characters of a failed job's message


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.nice is not None:
        # Set here too, before any thread starts: the threads a fit starts (BLAS, OpenMP)
        # inherit it, whereas app/jobs.py's setpriority from outside reaches this one only.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    result_file: Path = args.result
    try:
        outcome = _run(args.model, args.then, args.since, args.search)
    except StewardError as exc:
        outcome = _failed(exc.code, exc.message)
    except Exception as exc:  # anything else still ends as one line in the job, not a traceback
        # Its message may quote stored inputs: the job says the type only, stderr has the rest.
        traceback.print_exc()
        outcome = _failed(FAILED_CODE, f"{type(exc).__name__}: {UNEXPECTED}")
    _write(result_file, outcome)
    _progress(f"done: {outcome['status']}")
    return 0 if outcome["status"] != "failed" else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.retrain_job")
    parser.add_argument("model")
    parser.add_argument("result", type=Path)
    parser.add_argument("--then", choices=("keep", "candidate", "promote"), default="keep")
    parser.add_argument("--since", type=datetime.fromisoformat, default=None)
    parser.add_argument("--search", action="store_true")
    parser.add_argument("--nice", type=int, default=None, help="this process's nice value")
    return parser


def _run(model: str, then: str, since: datetime | None, search: bool) -> dict[str, Any]:
    _progress("loading settings and the store")
    from app.progress import Lines
    from app.retraining import Then, retrain
    from app.settings import load_settings
    from app.store import open_configured_store

    settings = load_settings()
    store = open_configured_store(settings)
    try:
        result = retrain(
            settings,
            store,
            model,
            since=since,
            then=cast(Then, then),
            search=search,
            progress=Lines(sys.stdout, every_tick=True),
            by=ACTOR,
        )
    finally:
        store.close()
    data, search_record = result.data, result.version.search
    aliased = result.aliased.change if result.aliased is not None else None
    return {
        "status": "passed" if result.decision.passed else "refused",
        "version": result.version.version,
        "decision": result.decision.model_dump(mode="json"),
        "data": {
            "production_version": data.production.version,
            "labelled": data.labelled,
            "trained_on": result.trained_on,
            "same_as_held_out": result.overlap,
            "held_out": data.held_out,
            "duplicates": data.duplicates,
            "conflicts": data.conflicts,
            "unfit": data.unfit,
        },
        "aliased": aliased.alias if aliased is not None else None,
        "search": search_record.model_dump(mode="json") if search_record is not None else None,
    }


def _failed(code: str, message: str) -> dict[str, Any]:
    line = " ".join(message.split())  # one line, whatever the error carried
    if len(line) > MAX_MESSAGE:
        line = line[: MAX_MESSAGE - 1] + "…"
    return {"status": "failed", "error": {"code": code, "message": line}}


def _write(path: Path, outcome: dict[str, Any]) -> None:
    """Atomically: the server reads the file once the process ended, never half of it."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(outcome))
    os.replace(partial, path)


def _progress(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
