"""The registry's on-disk format: version folders and their metadata.

    models/<name>/<version>/model.joblib    the fitted estimator: joblib (pickle), or
    models/<name>/<version>/model.skops     skops, built from an allowlist of types
                                            (app/artifact_formats.py; metadata's
                                            ``artifact_format`` says which)
    models/<name>/<version>/metadata.json   ModelMetadata, including the artifact's sha256
    models/<name>/<version>/training.csv.gz the rows a CSV-trained version was given (gzip),
                                            when under the size cap (TrainingData says)
    models/<name>/<version>/twin.onnx       its compiled twin, once proven equal to it
    models/<name>/<version>/twin.treelite   (app/compiling.py; metadata's ``compilation``)

A version directory appears whole or not at all (written aside, then renamed into place, its
extra files such as training.csv.gz with it), so a reader never sees half of one. Where each
alias points, its history and the traffic policy live beside the versions, in
models/<name>/aliases.json: app/aliases.py.

joblib, skops and scikit-learn are imported by the functions that read and write an
estimator, so listing the registry or moving an alias (`steward models`, `steward promote`)
stays light.
"""

import contextlib
import hashlib
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from app.artifact_formats import FILES, ArtifactFormat, ArtifactPolicy, dump, load, refuse_pickle
from app.errors import ArtifactError
from app.features import FeatureSpec, InputContract
from app.gate import GateDecision
from app.search import SearchRecord

ARTIFACT = FILES["joblib"]
METADATA = "metadata.json"
TRAINING_COPY = "training.csv.gz"
TWIN_FILES = frozenset({"twin.onnx", "twin.treelite"})

logger = logging.getLogger(__name__)
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")  # \Z: "$" lets a final newline in

Label = str | int | float
Task = Literal["classification", "regression"]
InputFormat = Literal["array", "dataframe"]
TwinRuntime = Literal["onnxruntime", "treelite"]
NoTwinReason = Literal["unsupported", "proof_failed", "no_proof_rows"]


class TwinProof(BaseModel):
    """How a compiled twin was shown equal to its estimator (app/compiling.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reference_rows: int = Field(description="Rows drawn from the version's reference profile.")
    held_out_rows: int = Field(description="Rows the version was not fitted on.")
    held_out_source: str | None = Field(
        None, description="Where those came from: demo, training_copy, training_split, sample."
    )
    held_out_note: str | None = Field(None, description="Why there are none, when none.")
    max_difference: float = Field(
        description="Largest absolute difference of a probability or (relative) of a value."
    )
    tolerance: float = Field(description="The largest difference the proof allows.")


class CompiledTwin(BaseModel):
    """A version's compiled twin: its file, checksum, how it takes its input, and its proof."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runtime: TwinRuntime
    runtime_version: str = Field(description="Of the runtime that compiled and proved it.")
    file: str = Field(description="In the version's folder: twin.onnx or twin.treelite.")
    sha256: str
    sklearn_steps: int = Field(
        0, ge=0, description="Leading pipeline steps kept in scikit-learn (0: none)."
    )
    precision: Literal["float64", "float32"] = Field(
        description="The twin's input: float32 where the estimator itself rounds to float32."
    )
    scores: bool = Field(
        False,
        description="The twin computes a linear classifier's decision function; labels are "
        "read from it as scikit-learn reads them.",
    )
    proof: TwinProof


class Compilation(BaseModel):
    """What compiling a version gave: a twin, or the reason it serves on scikit-learn alone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    twin: CompiledTwin | None = None
    reason: NoTwinReason | None = Field(None, description="Why there is no twin, when none.")
    message: str = ""
    compiled_at: datetime


Compiled = tuple[Compilation, bytes | None]
"""A compilation and its twin's bytes (None: no twin), as app/compiling.py gives them."""


class FeatureProfile(BaseModel):
    """Training distribution of one feature (app/drift.py): for a number, its quantiles, its
    decile bins (inner edges, training share per bin) and a sorted sample of its values; for a
    category, each category's share. Profiles written before drift scores have only
    ``probabilities``/``quantiles`` or ``frequencies``; ``rows`` tells the new ones."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    probabilities: list[float] | None = None
    quantiles: list[float] | None = None
    frequencies: dict[str, float] | None = None
    rows: int | None = Field(None, ge=0, description="Training values present (not missing).")
    missing: float | None = Field(None, ge=0, le=1, description="Training share missing.")
    edges: list[float] | None = Field(None, description="Inner bin edges, ascending.")
    shares: list[float] | None = Field(None, description="Training share per bin.")
    sample: list[float] | None = Field(None, description="Training values for the KS test.")

    @model_validator(mode="after")
    def _consistent(self) -> "FeatureProfile":
        """A profile that cannot be scored against is refused here, not mid-computation."""
        numbers = [
            *(self.quantiles or ()),
            *(self.edges or ()),
            *(self.shares or ()),
            *(self.sample or ()),
            *(self.frequencies or {}).values(),
        ]
        if not all(math.isfinite(n) for n in numbers):
            raise ValueError("a reference profile holds finite numbers only")
        if self.edges is not None and any(a >= b for a, b in pairwise(self.edges)):
            raise ValueError("bin edges must ascend")
        if (self.edges is None) != (self.shares is None) or (
            self.shares is not None and len(self.shares) != len(self.edges or ()) + 1
        ):
            raise ValueError("one training share per bin: one more than the edges")
        for shares in (self.shares, self.frequencies and list(self.frequencies.values())):
            if shares and (min(shares) < 0 or abs(sum(shares) - 1) > 1e-3):
                raise ValueError("training shares are at least 0 and add up to 1")
        return self


def _profile_or_nothing(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A version whose profile is unreadable still serves: it has no reference (app/drift.py
    says so), rather than its metadata being refused."""
    try:
        return handler(value)
    except ValidationError:
        logger.warning("a reference profile in metadata is unreadable: taken as none")
        return {}


ReferenceProfile = Annotated[dict[str, FeatureProfile], WrapValidator(_profile_or_nothing)]


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
    base_split: DataSplit | None = Field(
        None,
        description="A retrained version's: the split of the base (the first source) whose "
        "held-out part no retraining from it fits on, the gate's held_out set. None: ``split``, "
        "which for a version trained on the base alone is that split.",
    )
    feedback_since: datetime | None = Field(
        None, description="A retrained version's: feedback made at or after this (None: all)."
    )
    feedback_until: datetime | None = Field(
        None,
        description="A retrained version's: feedback made after this was held out as recent "
        "traffic, not trained on (None: no feedback).",
    )
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
    input_format: InputFormat = Field(
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
    artifact_format: ArtifactFormat = Field(
        "joblib",
        description="How the estimator is stored: model.joblib (pickle) or model.skops. "
        "Metadata written before skops has none: joblib.",
    )
    converted_from: int | None = Field(
        None,
        description="The version whose estimator this one is, stored in another format "
        "(`steward convert`): the same answers. None for any other version.",
    )
    sha256: str = Field("", description="Of the artifact; set by save_version.")
    created_at: datetime | None = Field(None, description="Set by save_version.")
    reference_profile: ReferenceProfile = Field(default_factory=dict)
    description: str = ""
    training_data: TrainingData | None = Field(
        None, description="Its data's sources and counts; None in metadata written before."
    )
    gate: GateDecision | None = Field(
        None, description="A retrained version's gate decision against production (app/gate.py)."
    )
    search: SearchRecord | None = Field(
        None,
        description="A version retrained with --search: the hyperparameter search that chose its "
        "parameters (app/search.py); None for any other version.",
    )
    compilation: Compilation | None = Field(
        None, description="Its compiled twin, or why it has none; None before it was compiled."
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


def unreadable_models(root: Path) -> dict[str, str]:
    """Model names in ``root`` that are links to no folder (dangling, looping, or to a file),
    each with why: ``list_models`` leaves them out, the registry refuses them by name.

    A link is a model someone meant to serve (a release folder mounted by symlink whose target
    went away); a stray file with a model-like name is not, and stays ignored.
    """
    if not root.is_dir():
        return {}
    problems = {}
    for path in root.iterdir():
        if not (NAME_PATTERN.match(path.name) and path.is_symlink()) or path.is_dir():
            continue
        try:
            path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:  # RuntimeError: a loop, before Python 3.13
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "a link loop"
            problems[path.name] = f"{path.name}/ is a link that cannot be followed: {why}"
        else:
            problems[path.name] = f"{path.name}/ is a link to something that is not a folder"
    return dict(sorted(problems.items()))


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


def artifact_file(metadata: ModelMetadata) -> str:
    """The estimator's file in the version's folder: model.joblib or model.skops."""
    return FILES[metadata.artifact_format]


def load_estimator(
    root: Path, metadata: ModelMetadata, policy: ArtifactPolicy | None = None
) -> Any:
    """Read the artifact once, check its sha256 against the metadata, then build the estimator
    as ``policy`` allows (default: pickle allowed, the built-in skops allowlist). A joblib
    artifact under a policy refusing pickle is refused (PickleRefused) before it is read."""
    policy = policy or ArtifactPolicy()
    name, version = metadata.name, metadata.version
    if metadata.artifact_format == "joblib":
        refuse_pickle(policy, name, version)
    file_name = artifact_file(metadata)
    try:
        data = (root / name / str(version) / file_name).read_bytes()
    except OSError as exc:
        raise ArtifactError(f"{name} v{version}: {exc}") from exc
    digest = sha256_bytes(data)
    if digest != metadata.sha256:
        raise ChecksumMismatch(
            f"{name} v{version}: sha256 of {file_name} is {digest}, metadata says {metadata.sha256}"
        )
    return load(data, metadata.artifact_format, policy, name, version)


def save_version(
    root: Path,
    draft: ModelMetadata,
    estimator: Any,
    *,
    promote: bool = False,
    extra_files: Mapping[str, bytes] | None = None,
    compiled: Compiled | None = None,
) -> ModelMetadata:
    """Store ``estimator`` as version max+1 of ``draft.name``; returns the final metadata.

    The estimator is stored in ``draft.artifact_format``. ``extra_files`` (file name ->
    content, e.g. the training copy) and the ``compiled`` twin are written into the same
    staging folder, so they appear with the version or not at all. ``production`` is pointed
    at the new version when the model had none, or when ``promote``.
    """
    import sklearn

    name = check_name(draft.name)
    extra = dict(extra_files or {})
    if compiled is not None:
        compilation, twin = compiled
        draft = draft.model_copy(update={"compilation": compilation})
        if compilation.twin is not None and twin is not None:
            extra[compilation.twin.file] = twin
    for file_name in extra:
        if file_name in (*FILES.values(), METADATA) or not NAME_PATTERN.match(file_name):
            raise ArtifactError(f"{name}: {file_name!r} cannot be a version's extra file")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    data = dump(estimator, draft.artifact_format)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        (staging / FILES[draft.artifact_format]).write_bytes(data)
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
    from app.aliases import read_aliases, set_alias  # here: app.aliases imports this module

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


def save_compilation(
    root: Path, metadata: ModelMetadata, compilation: Compilation, twin: bytes | None
) -> ModelMetadata:
    """Record a compilation in a saved version: the twin's file first, then the metadata that
    names it and its sha256, each replaced atomically. The one change a version's folder takes
    after it is saved; its artifact never changes."""
    folder = root / metadata.name / str(metadata.version)
    if compilation.twin is not None:
        if twin is None or sha256_bytes(twin) != compilation.twin.sha256:
            raise ArtifactError(f"{metadata.name} v{metadata.version}: not the twin proven")
        write_atomically(folder / compilation.twin.file, twin)
    updated = metadata.model_copy(update={"compilation": compilation})
    write_atomically(folder / METADATA, updated.model_dump_json(indent=2) + "\n")
    for stale in TWIN_FILES - {compilation.twin.file if compilation.twin else ""}:
        with contextlib.suppress(FileNotFoundError):
            (folder / stale).unlink()  # a twin the metadata no longer names
    return updated


def write_atomically(path: Path, content: str | bytes) -> None:
    """Replace ``path`` with ``content`` so that a reader sees the old file or the new one."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644  # mkstemp's is 0600
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir_entries(folder: Path) -> None:
    for child in folder.iterdir():
        with child.open("rb") as handle:
            os.fsync(handle.fileno())
