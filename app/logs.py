"""The server's logs: one JSON object a line (or plain text), each line of a request with its id.

The standard library's logging, formatted by python-json-logger: uvicorn logs through the
standard library too, so its lines (start-up, errors) go through the same handler and formatter
(``config`` is both ``logging.config.dictConfig``'s input and uvicorn's ``log_config``).

The request being handled is a context variable (``RequestContext``), set by the HTTP wing for
each request and read by a filter on the handler: every line logged while handling a request
names its ``request_id``, from the task that serves it or a thread that task runs work in. A task
started during a request (a batcher lane, a retrain job) inherits the variable but is not that
request: its lines carry no id. A task that outlives the request starting it (a batcher lane, a
shadow run) is started in ``detached()``, else the threads it runs work in, which cannot tell
tasks apart, would log the first request's id.
"""

import asyncio
import contextvars
import logging
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS

from app.ids import new_ids
from app.settings import Settings

ACCESS_LOGGER = "steward.access"
MAX_REQUEST_ID = 128
# What a request id a client sends may be: a uuid, a trace id, a load balancer's id
# ("Root=1-5759e988-bd862e3fe1be46a994272793"). Anything else is replaced, never logged.
_SAFE_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:=+/-]{{1,{MAX_REQUEST_ID}}}")
_JSON_FIELDS = {"levelname": "level", "name": "logger"}
# Record attributes that are not fields of a JSON line: the standard ones, and uvicorn's copy of
# its message with terminal colours.
_NOT_FIELDS = [*RESERVED_ATTRS, "color_message"]
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


@dataclass(slots=True)
class RequestContext:
    """The request being handled, and what its access line will say about it."""

    request_id: str
    task: asyncio.Task[Any] | None
    fields: dict[str, Any] = field(default_factory=dict)


_current: ContextVar[RequestContext | None] = ContextVar("steward_request", default=None)


def request_id(given: str | None) -> str:
    """The client's id if it is a safe one, else a new one: a UUIDv7 as 32 hex digits, from the
    pool of random bytes prediction ids use (``os.urandom`` per request lets go of the GIL, and
    the event loop waits to get it back: docs/performance.md)."""
    if given is not None and _SAFE_REQUEST_ID.fullmatch(given):
        return given
    return new_ids(1)[0]


def begin(request_id: str) -> RequestContext:
    """Make the current task the one handling request ``request_id``."""
    context = RequestContext(request_id, _current_task())
    _current.set(context)
    return context


def detached() -> contextvars.Context:
    """A copy of the current context outside any request: for a task (or callback) that
    outlives the request that starts it."""
    context = contextvars.copy_context()
    context.run(_current.set, None)
    return context


def note(**fields: Any) -> None:
    """Add ``fields`` (model, version, rows) to the access line of the request being handled."""
    context = _current.get()
    if context is not None:
        context.fields.update(fields)


def current_request_id() -> str | None:
    """The id of the request the caller handles (None: it handles none)."""
    context = _current.get()
    if context is None:
        return None
    task = _current_task()
    return context.request_id if task is None or task is context.task else None


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # a thread with no event loop: one the request's task runs work in
        return None


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` on every record (``missing`` outside a request)."""

    def __init__(self, missing: str | None = None) -> None:
        super().__init__()
        self.missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        found = current_request_id()
        record.request_id = self.missing if found is None else found
        return True


def config(settings: Settings) -> dict[str, Any]:
    """The logging configuration of the server, for dictConfig and for uvicorn's log_config."""
    formatter: dict[str, Any]
    missing = None
    if settings.log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.orjson.OrjsonFormatter",
            "fmt": "{levelname}{name}{message}",
            "style": "{",
            "rename_fields": _JSON_FIELDS,
            "timestamp": "time",
            "reserved_attrs": _NOT_FIELDS,
        }
    else:
        formatter, missing = {"format": _TEXT_FORMAT}, "-"
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter, "missing": missing}},
        "formatters": {"steward": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "steward",
                "filters": ["request_id"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        # uvicorn's loggers handled by the root's handler, so formatted alike.
        "loggers": {
            name: {"level": level, "handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
