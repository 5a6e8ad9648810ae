"""A model's aliases.json: where each alias points, its history, the traffic policy; under a
lock, replaced atomically.

    models/<name>/aliases.json              {"aliases": {"production": 3, "candidate": 4},
                                             "history": [{"alias", "from", "to", "at", "by",
                                                          "action"}, ...],
                                             "traffic": {"mode", "percent", "candidate",
                                                         "at", "by"},
                                             "auto_rollback": {"enabled", "min_labels",
                                                               "margin", "at", "by"}}
    models/<name>/.aliases.lock             flock()ed by whoever changes aliases.json

aliases.json is replaced atomically, so a reader never sees half of it. Writers take the model's
lock around read-modify-write, so two processes promoting at once both land, in order, in the
history. A file in the first format, ``{"production": 3}``, is read as those aliases with no
history yet, and one without ``traffic`` as traffic mode ``none``; the next change writes the new
format. The traffic policy has no history: it carries its own ``at`` and ``by``, and names the
candidate version it was set for. Moving production onto that version ends the experiment, and
moving the candidate alias elsewhere starts a new one: either way the same write sets traffic
back to ``none``, so no version receives traffic it was not given by name. ``auto_rollback`` is
there only once someone set the model's own automatic-rollback policy (app/auto_rollback.py).
"""

import contextlib
import errno
import fcntl
import getpass
import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from app.artifacts import list_versions, write_atomically
from app.errors import AliasesUnreadable, ArtifactError, RegistryReadOnly, UnknownVersion

ALIASES = "aliases.json"
# A registry this process cannot write: a read-only mount (EROFS), or files of another user.
READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
REGISTRY_READ_ONLY_HINT = (
    "change aliases where the registry is writable (docs/operations.md, Kubernetes)"
)
ALIASES_LOCK = ".aliases.lock"
ALIAS_NAMES = ("production", "candidate")
MAX_ACTOR = 200  # characters of an alias change's "by"


class AliasChange(BaseModel):
    """One entry of an aliases file's history: ``alias`` moved from ``from`` (None: it was not
    set) to ``to``, at ``at`` (UTC), by ``by`` (``user@host`` of the process, or the actor the
    caller named, e.g. ``admin-api``); ``action`` says whether it was a rollback."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    alias: str
    from_: StrictInt | None = Field(alias="from")
    to: StrictInt
    at: datetime
    by: str = Field(min_length=1, max_length=MAX_ACTOR)
    action: Literal["promote", "rollback"] = "promote"


TrafficMode = Literal["none", "shadow", "canary"]


class TrafficPolicy(BaseModel):
    """How a model's requests reach its candidate version (docs/operations.md):

    - ``none``: production answers every request;
    - ``shadow``: production answers; the candidate also predicts the rows of ``percent`` of
      the requests, off the response path, logged as shadow predictions, never returned;
    - ``canary``: the candidate answers ``percent`` of the requests (the same share for one
      ``X-Steward-Key``), production the rest.

    A shadow or canary policy is set for one candidate version, ``candidate``: it applies while
    the ``candidate`` alias points at that version, loaded, and not the production version;
    otherwise production answers everything. Moving the candidate alias, or production onto
    the candidate, sets the policy back to ``none`` (``record_alias``): a new candidate starts
    with no traffic. ``at`` and ``by`` say who set it, and when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: TrafficMode = "none"
    # strict: a hand-written "50" or true is refused, as aliases' versions are
    percent: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False, strict=True)
    candidate: StrictInt | None = Field(None, ge=1)
    at: datetime | None = None
    by: str | None = Field(None, max_length=MAX_ACTOR)

    @model_validator(mode="after")
    def _consistent(self) -> "TrafficPolicy":
        if self.mode == "none" and (self.percent != 0 or self.candidate is not None):
            raise ValueError("mode none has percent 0 and no candidate")
        if self.mode != "none" and self.candidate is None:
            raise ValueError(f"a {self.mode} policy names its candidate version")
        return self


MAX_MIN_LABELS = 1_000_000_000  # an automatic rollback's label count, at most


class AutoRollbackPolicy(BaseModel):
    """A model's own automatic-rollback policy (app/auto_rollback.py), overriding the settings
    (``STEWARD_AUTO_ROLLBACK*``) for it: ``enabled``, and the least labels and the margin, each
    None to keep the setting's. ``at`` and ``by`` say who set it, and when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(strict=True)
    min_labels: StrictInt | None = Field(None, ge=1, le=MAX_MIN_LABELS)
    margin: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False, strict=True)
    at: datetime | None = None
    by: str | None = Field(None, max_length=MAX_ACTOR)


class AliasFile(BaseModel):
    """A model's aliases.json: where each alias points, every change that led there, the
    traffic policy between production and candidate, and the model's own automatic-rollback
    policy (None: the settings')."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aliases: dict[str, StrictInt]
    history: list[AliasChange] = Field(default_factory=list)
    traffic: TrafficPolicy = Field(default_factory=TrafficPolicy)
    auto_rollback: AutoRollbackPolicy | None = None


def read_aliases(root: Path, name: str) -> dict[str, int]:
    """Where each alias of ``name`` points ({} when it has no aliases.json)."""
    return read_alias_file(root, name).aliases


def read_alias_file(root: Path, name: str) -> AliasFile:
    """``name``'s aliases and their history; AliasesUnreadable if the file is not one."""
    path = root / name / ALIASES
    try:
        text = path.read_text()
    except FileNotFoundError:
        return AliasFile(aliases={})
    except (OSError, ValueError) as exc:
        raise _unreadable(path, str(exc)) from exc
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise _unreadable(path, f"not JSON ({exc})") from exc
    if isinstance(raw, dict) and all(type(v) is int for v in raw.values()):
        return AliasFile(aliases=raw)  # the first format: aliases only, no history yet
    if not isinstance(raw, dict) or "aliases" not in raw:
        raise _unreadable(path, "not a map of alias names to version numbers")
    try:
        return AliasFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        raise _unreadable(path, f"{where}: {first['msg']}") from exc


def _unreadable(path: Path, reason: str) -> AliasesUnreadable:
    return AliasesUnreadable(
        f"{path} is not a valid aliases file ({reason}); it was left as it is: fix it by hand "
        'to {"aliases": {"production": N}, "history": []} (or {"production": N}), or move it '
        "aside and promote a version again"
    )


def set_alias(
    root: Path, name: str, alias: str, version: int, *, by: str | None = None
) -> AliasFile:
    """Point ``alias`` at ``version`` under the model's lock (see ``record_alias``); returns
    the file as it now is."""
    if alias not in ALIAS_NAMES:
        raise ArtifactError(f"unknown alias {alias!r}; expected one of {', '.join(ALIAS_NAMES)}")
    if version not in list_versions(root, name):
        raise UnknownVersion(f"{name} has no version {version}", model=name)
    with aliases_locked(root, name):
        return record_alias(root, name, alias, version, by=by)[0]


def record_alias(
    root: Path,
    name: str,
    alias: str,
    version: int,
    *,
    by: str | None = None,
    action: Literal["promote", "rollback"] = "promote",
) -> tuple[AliasFile, AliasChange | None]:
    """Point ``alias`` at ``version`` and append the change to the history, replacing
    aliases.json atomically; the caller holds ``aliases_locked``. Returns the file as written
    and the change (None: the alias already pointed there, nothing was written). Production
    moved onto the candidate's version, or the candidate moved off the version its traffic
    policy was set for, sets traffic back to ``none`` in the same write. An unreadable file is
    refused, never overwritten."""
    current = read_alias_file(root, name)
    previous = current.aliases.get(alias)
    if previous == version:
        return current, None
    change = AliasChange(
        alias=alias,
        from_=previous,
        to=version,
        at=datetime.now(UTC),
        by=by or process_actor(),
        action=action,
    )
    aliases = current.aliases | {alias: version}
    traffic = current.traffic
    if traffic.mode != "none" and (
        aliases.get("candidate") != traffic.candidate
        or aliases.get("production") == traffic.candidate
    ):  # the version the policy was set for is no longer a candidate beside production
        traffic = TrafficPolicy(at=change.at, by=change.by)
    written = current.model_copy(
        update={"aliases": aliases, "history": [*current.history, change], "traffic": traffic}
    )
    _write_alias_file(root, name, written)
    return written, change


def record_traffic(root: Path, name: str, policy: TrafficPolicy) -> AliasFile:
    """Replace the traffic policy in aliases.json atomically, aliases and history as they are;
    the caller holds ``aliases_locked``. Returns the file as written (unchanged, and not
    written, when it already held a policy of the same mode and percent). An unreadable file
    is refused, never overwritten."""
    current = read_alias_file(root, name)
    same = (policy.mode, policy.percent, policy.candidate)
    if (current.traffic.mode, current.traffic.percent, current.traffic.candidate) == same:
        return current
    written = current.model_copy(update={"traffic": policy})
    _write_alias_file(root, name, written)
    return written


def record_auto_rollback(root: Path, name: str, policy: AutoRollbackPolicy) -> AliasFile:
    """Replace the model's automatic-rollback policy in aliases.json atomically, the rest as it
    is; the caller holds ``aliases_locked``. Returns the file as written. An unreadable file is
    refused, never overwritten."""
    written = read_alias_file(root, name).model_copy(update={"auto_rollback": policy})
    _write_alias_file(root, name, written)
    return written


def _write_alias_file(root: Path, name: str, written: AliasFile) -> None:
    dumped = written.model_dump(mode="json", by_alias=True)
    if dumped["auto_rollback"] is None:  # a file without a policy stays as older Stewards wrote
        del dumped["auto_rollback"]
    text = json.dumps(dumped, indent=2, sort_keys=True)
    write_atomically(root / name / ALIASES, text + "\n")


@contextlib.contextmanager
def aliases_locked(root: Path, name: str) -> Iterator[None]:
    """Hold ``name``'s aliases lock (an exclusive flock, across processes) for a
    read-modify-write of aliases.json. The lock file stays: removing it would let two writers
    lock two different files."""
    try:
        fd = os.open(root / name / ALIASES_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in READ_ONLY:
            raise
        raise RegistryReadOnly(
            "the model registry is read-only here: nothing was changed",
            [{"field": "registry", "message": REGISTRY_READ_ONLY_HINT}],
            model=name,
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def process_actor() -> str:
    """Who this process acts for, as an alias history records it: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry and no $USER
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"
