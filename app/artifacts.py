"""The registry's on-disk format.

    models/<name>/<version>/model.joblib    the fitted estimator (joblib)
    models/<name>/<version>/metadata.json   ModelMetadata, including the artifact's sha256
    models/<name>/<version>/training.csv.gz the rows a CSV-trained version was given (gzip),
                                            when under the size cap (TrainingData says)
    models/<name>/aliases.json              {"aliases": {"production": 3, "candidate": 4},
                                             "history": [{"alias", "from", "to", "at", "by",
                                                          "action"}, ...],
                                             "traffic": {"mode", "percent", "candidate",
                                                         "at", "by"}}
    models/<name>/.aliases.lock             flock()ed by whoever changes aliases.json

A version directory appears whole or not at all (written aside, then renamed into place, its
extra files such as training.csv.gz with it), and aliases.json is replaced atomically, so a
reader never sees half of either. Writers of aliases.json take the model's lock around
read-modify-write, so two processes promoting at once both land, in order, in the history. A file in
the first format, ``{"production": 3}``, is read as those aliases with no history yet, and one
without ``traffic`` as traffic mode ``none``; the next change writes the new format. The traffic
policy has no history: it carries its own ``at`` and ``by``, and names the candidate version it
was set for. Moving production onto that version ends the experiment, and moving the candidate
alias elsewhere starts a new one: either way the same write sets traffic back to ``none``, so no
version receives traffic it was not given by name.

joblib and scikit-learn are imported by the two functions that read and write an estimator,
so listing the registry or moving an alias (`steward models`, `steward promote`) stays light.
"""

import contextlib
import fcntl
import getpass
import hashlib
import io
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from app.errors import AliasesUnreadable, ArtifactError, UnknownVersion
from app.features import FeatureSpec, InputContract

ARTIFACT = "model.joblib"
METADATA = "metadata.json"
ALIASES = "aliases.json"
ALIASES_LOCK = ".aliases.lock"
TRAINING_COPY = "training.csv.gz"
ALIAS_NAMES = ("production", "candidate")
MAX_ACTOR = 200  # characters of an alias change's "by"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")  # \Z: "$" lets a final newline in

Label = str | int | float
Task = Literal["classification", "regression"]


class FeatureProfile(BaseModel):
    """Training distribution of one feature: quantiles if numeric, frequencies if categorical."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    probabilities: list[float] | None = None
    quantiles: list[float] | None = None
    frequencies: dict[str, float] | None = None


SourceKind = Literal["demo", "csv", "sample", "feedback"]


class DataSource(BaseModel):
    """One source of a version's data: a demo dataset bundled with scikit-learn (``name`` is
    its demo name), a CSV file (``name`` is the file's name, never its path, which may be
    private), the sample a registered model's schema came from (its file name), or labelled
    predictions from the store (``feedback``, no name)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: SourceKind
    name: str | None = None
    rows: int = Field(ge=0, description="Rows this source contributed.")
    sha256: str | None = Field(
        None,
        description="Of its rows as CSV text with a header (a CSV's columns in the file's order, "
        "after --drop; a demo's features, then `target`): the same rows rebuilt or given again "
        "have the same digest. None for a sample.",
    )


class DataSplit(BaseModel):
    """How the rows were split into a training and a held-out part (train_test_split)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    test_size: float = Field(gt=0, lt=1)
    seed: int
    stratified: bool = Field(description="Stratified by class (classifiers, when possible).")


class TrainingData(BaseModel):
    """Where a version's data came from, and how much of it, so that it can be rebuilt: a demo
    from scikit-learn's bundled data, a CSV version from its kept copy (``copy_file``) or the
    same CSV given again (its source's ``sha256`` tells whether it holds the same rows), a
    registered version from nothing (it had a sample, not training data)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: list[DataSource]
    rows: int = Field(0, ge=0, description="Rows of all sources together.")
    training_rows: int = Field(0, ge=0, description="Rows the model was fitted on.")
    held_out_rows: int = Field(0, ge=0, description="Rows its metrics were measured on.")
    split: DataSplit | None = Field(None, description="None when Steward did not train it.")
    target: str | None = Field(None, description="The CSV's (or labelled sample's) target column.")
    dropped: list[str] = Field(default_factory=list, description="CSV columns left out (--drop).")
    dates: list[str] = Field(default_factory=list, description="CSV columns read as dates.")
    unlabelled_rows: int = Field(
        0, ge=0, description="CSV rows left out because their target was empty."
    )
    copy_file: str | None = Field(
        None, description=f"{TRAINING_COPY} when the version folder keeps a copy of the rows."
    )
    copy_sha256: str | None = Field(None, description="Of the compressed copy.")
    copy_bytes: int | None = Field(None, ge=0, description="Size of the compressed copy.")
    no_copy_reason: str | None = Field(None, description="Why no copy is kept, when none is.")


class ModelMetadata(BaseModel):
    """Everything Steward knows about one model version; stored as metadata.json."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str
    version: int = Field(0, description="Set by save_version.")
    task: Task
    features: list[FeatureSpec]
    classes: list[Label] | None = Field(None, description="Class labels, in predict_proba order.")
    has_proba: bool = False
    input_format: Literal["array", "dataframe"] = Field(
        "array", description="Rows reach the model as a NumPy array or a named DataFrame."
    )
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Held-out metrics; for a registered model, on its sample (if labelled).",
    )
    target_min: float | None = Field(None, description="Smallest training target (regressors).")
    target_max: float | None = Field(None, description="Largest training target (regressors).")
    training_rows: int = Field(0, description="Rows it was fitted on, when trained by Steward.")
    sample_rows: int = Field(
        0,
        description="Rows of the sample a registered model's schema and profile come from (and "
        "its metrics, when the sample carried the target).",
    )
    sklearn_version: str = Field("", description="Set by save_version.")
    sha256: str = Field("", description="Of model.joblib; set by save_version.")
    created_at: datetime | None = Field(None, description="Set by save_version.")
    reference_profile: dict[str, FeatureProfile] = Field(default_factory=dict)
    description: str = ""
    training_data: TrainingData | None = Field(
        None, description="Its data's sources and counts; None in metadata written before."
    )

    def medians(self) -> dict[str, float]:
        """Training medians of the numeric features, from the reference profile."""
        medians = {}
        for name, profile in self.reference_profile.items():
            if profile.quantiles and profile.probabilities and 0.5 in profile.probabilities:
                medians[name] = profile.quantiles[profile.probabilities.index(0.5)]
        return medians

    def contract(self, *, max_instances: int = 1000, range_multiple: float = 0.0) -> InputContract:
        """This version's input contract: its request model and its rows -> matrix builder."""
        return InputContract.build(
            self.name,
            self.version,
            self.features,
            dataframe=self.input_format == "dataframe",
            max_instances=max_instances,
            range_multiple=range_multiple,
        )


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


class AliasFile(BaseModel):
    """A model's aliases.json: where each alias points, every change that led there, and the
    traffic policy between production and candidate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aliases: dict[str, StrictInt]
    history: list[AliasChange] = Field(default_factory=list)
    traffic: TrafficPolicy = Field(default_factory=TrafficPolicy)


class ChecksumMismatch(ArtifactError):
    """The artifact on disk is not the one its metadata describes."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ArtifactError(
            f"invalid model name {name!r}: use 1-64 of a-z, 0-9, '.', '_', '-' "
            "(starting with a letter or digit)"
        )
    return name


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_models(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name))


def list_versions(root: Path, name: str) -> list[int]:
    folder = root / name
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in folder.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit()
    )


def read_metadata(root: Path, name: str, version: int) -> ModelMetadata:
    path = root / name / str(version) / METADATA
    try:
        return ModelMetadata.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ArtifactError(f"{name} v{version}: unreadable {METADATA}: {exc}") from exc


def load_estimator(root: Path, metadata: ModelMetadata) -> Any:
    """Read the artifact once, check its sha256 against the metadata, then unpickle it."""
    path = root / metadata.name / str(metadata.version) / ARTIFACT
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{metadata.name} v{metadata.version}: {exc}") from exc
    digest = sha256_bytes(data)
    if digest != metadata.sha256:
        raise ChecksumMismatch(
            f"{metadata.name} v{metadata.version}: sha256 of {ARTIFACT} is {digest}, "
            f"metadata says {metadata.sha256}"
        )
    import joblib

    return joblib.load(io.BytesIO(data))


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
    written = AliasFile(
        aliases=aliases,
        history=[*current.history, change],
        traffic=traffic,
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


def _write_alias_file(root: Path, name: str, written: AliasFile) -> None:
    text = json.dumps(written.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True)
    _write_atomically(root / name / ALIASES, text + "\n")


@contextlib.contextmanager
def aliases_locked(root: Path, name: str) -> Iterator[None]:
    """Hold ``name``'s aliases lock (an exclusive flock, across processes) for a
    read-modify-write of aliases.json. The lock file stays: removing it would let two writers
    lock two different files."""
    fd = os.open(root / name / ALIASES_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
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


def save_version(
    root: Path,
    draft: ModelMetadata,
    estimator: Any,
    *,
    promote: bool = False,
    extra_files: Mapping[str, bytes] | None = None,
) -> ModelMetadata:
    """Store ``estimator`` as version max+1 of ``draft.name``; returns the final metadata.

    ``extra_files`` (file name -> content, e.g. the training copy) are written into the same
    staging folder, so they appear with the version or not at all. ``production`` is pointed at
    the new version when the model had none, or when ``promote``.
    """
    import joblib
    import sklearn

    name = check_name(draft.name)
    extra = dict(extra_files or {})
    for file_name in extra:
        if file_name in (ARTIFACT, METADATA) or not NAME_PATTERN.match(file_name):
            raise ArtifactError(f"{name}: {file_name!r} cannot be a version's extra file")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    data = buffer.getvalue()
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        (staging / ARTIFACT).write_bytes(data)
        for file_name, content in extra.items():
            (staging / file_name).write_bytes(content)
        while True:
            version = max(list_versions(root, name), default=0) + 1
            metadata = draft.model_copy(
                update={
                    "version": version,
                    "sha256": sha256_bytes(data),
                    "sklearn_version": sklearn.__version__,
                    "created_at": datetime.now(UTC),
                }
            )
            (staging / METADATA).write_text(metadata.model_dump_json(indent=2) + "\n")
            _fsync_dir_entries(staging)
            try:
                staging.rename(folder / str(version))
                break
            except OSError:  # another writer took this number first: take the next one
                if not (folder / str(version)).exists():
                    raise
    finally:
        if staging.exists():
            for child in staging.iterdir():
                child.unlink()
            staging.rmdir()
    if promote or "production" not in read_aliases(root, name):
        set_alias(root, name, "production", version)
    return metadata


def read_checked(root: Path, metadata: ModelMetadata, file_name: str, sha256: str) -> bytes:
    """A file of the version's folder, refused (ChecksumMismatch) unless it has ``sha256``."""
    where = f"{metadata.name} v{metadata.version}"
    try:
        data = (root / metadata.name / str(metadata.version) / file_name).read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{where}: {file_name} is missing") from None
    except OSError as exc:
        raise ArtifactError(f"{where}: cannot read {file_name}: {exc.strerror}") from exc
    digest = sha256_bytes(data)
    if digest != sha256:
        raise ChecksumMismatch(
            f"{where}: sha256 of {file_name} is {digest}, metadata says {sha256}"
        )
    return data


def _fsync_dir_entries(folder: Path) -> None:
    for child in folder.iterdir():
        with child.open("rb") as handle:
            os.fsync(handle.fileno())


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
