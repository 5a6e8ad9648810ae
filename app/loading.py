"""One model version from disk into memory, through the checks that decide whether to trust it.

A version is refused when its metadata is unreadable or names another version, when its
artifact is not the file the metadata describes (sha256), when it is joblib (pickle) and the
policy refuses pickle, when it is skops and holds a type outside the allowlist
(app/artifact_formats.py), or when the artifact does not load into something with a
``predict`` method. A version saved with another scikit-learn than the one
running is loaded, and the mismatch reported.

A version compiled with a twin (app/compiling.py) serves through it when twins are on, its
file matches its sha256 and it still answers what the estimator answers on the reference
sample (proved again here: the runtime may have been upgraded since). Otherwise the version
serves on scikit-learn, and ``fallback`` says why; the version itself is never refused for its
twin.
"""

import logging
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import sklearn
from pydantic import BaseModel

from app.artifact_formats import ArtifactPolicy, PickleRefused, UntrustedTypes
from app.artifacts import (
    ChecksumMismatch,
    Label,
    ModelMetadata,
    load_estimator,
    read_checked,
    read_metadata,
)
from app.errors import ArtifactError, ModelUnavailable
from app.features import InputContract, Row, widen
from app.schemas import parse_json
from app.twins import Twin, TwinMismatch, compare, open_twin

logger = logging.getLogger(__name__)

RowOutput = tuple[Label, dict[str, float] | None]  # prediction, class probabilities if any


@dataclass(frozen=True)
class Fallback:
    """Why a version serves on scikit-learn rather than its compiled twin.

    ``reason``: twins_off (the setting), not_compiled (compiled before twins, or never),
    unsupported / proof_failed / no_proof_rows (what compiling found), checksum_mismatch (the
    twin file is not the one proven), twin_unreadable (missing, or its runtime cannot open it),
    twin_differs (it no longer answers what the estimator answers)."""

    reason: str
    message: str


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A version ready to serve: its estimator and the input contract built from its metadata.

    ``output_range`` bounds a regressor's predictions (its training target range, widened);
    a prediction outside it is refused as unscorable rather than served.
    """

    metadata: ModelMetadata
    estimator: Any
    contract: InputContract
    output_range: tuple[float, float] | None = None
    sklearn_mismatch: str | None = None
    twin: Twin | None = None
    fallback: Fallback | None = None

    @property
    def runtime(self) -> str:
        """onnxruntime, treelite or sklearn: what answers its requests (app/prediction.py)."""
        return "sklearn" if self.twin is None else self.twin.runtime

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return self.metadata.version

    @property
    def request_model(self) -> type[BaseModel]:
        return self.contract.request_model

    def rows(self, body: bytes) -> list[Row]:
        """The rows of a /predict body, as this version's request model validates them:
        InvalidJSON or ValidationFailed (naming the field) when it does not."""
        request = parse_json(
            self.request_model.model_validate_json, body, keys=self.contract.key_count
        )
        return self.contract.rows(request)

    @cached_property
    def class_keys(self) -> list[str]:
        """The classes as JSON object keys, in predict_proba order."""
        return [str(c) for c in self.metadata.classes or ()]


@dataclass(frozen=True)
class Refusal:
    """Why a version (``version`` None: the model's aliases file) is not served."""

    model: str
    version: int | None
    reason: str
    message: str

    def unavailable(self) -> ModelUnavailable:
        """The error of a request for what was refused."""
        return ModelUnavailable(self.message, [{"reason": self.reason}], model=self.model)


class Refused(Exception):
    """A version failed a check; ``reason`` names which (metadata_error, checksum_mismatch,
    pickle_refused, untrusted_types, load_error), the message says what was found."""

    def __init__(self, reason: str, cause: Exception) -> None:
        super().__init__(str(cause))
        self.reason = reason


def load_version(
    root: Path,
    name: str,
    version: int,
    *,
    max_instances: int,
    input_range_multiple: float,
    target_range_multiple: float,
    twins: bool = True,
    policy: ArtifactPolicy | None = None,
) -> LoadedModel:
    """Read version ``version`` of model ``name`` and check it, its artifact loaded as
    ``policy`` allows (default: pickle allowed); raises Refused. Blocking."""
    try:
        metadata = read_metadata(root, name, version)
        if (metadata.name, metadata.version) != (name, version):
            raise ArtifactError(f"metadata names {metadata.name} v{metadata.version}")
    except ArtifactError as exc:
        raise Refused("metadata_error", exc) from exc
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimator = load_estimator(root, metadata, policy)
        if not callable(getattr(estimator, "predict", None)):
            raise ArtifactError("the artifact has no predict method")
    except ChecksumMismatch as exc:
        raise Refused("checksum_mismatch", exc) from exc
    except PickleRefused as exc:
        raise Refused("pickle_refused", exc) from exc
    except UntrustedTypes as exc:
        raise Refused("untrusted_types", exc) from exc
    except Exception as exc:  # unpickling can raise anything
        raise Refused("load_error", exc) from exc
    mismatch = None
    version_warnings = [str(w.message) for w in caught]
    if metadata.sklearn_version != sklearn.__version__ or version_warnings:
        mismatch = (
            f"saved with scikit-learn {metadata.sklearn_version}, running {sklearn.__version__}"
        )
        logger.warning("%s v%d: %s %s", name, version, mismatch, " ".join(version_warnings))
    twin, fallback = _twin(root, metadata, estimator) if twins else (None, TWINS_OFF)
    if fallback is not None and twins:
        why = fallback.message.removeprefix(f"{name} v{version}: ")
        logger.info("%s v%d serves on scikit-learn (%s): %s", name, version, fallback.reason, why)
    return LoadedModel(
        metadata=metadata,
        estimator=estimator,
        contract=metadata.contract(
            max_instances=max_instances, range_multiple=input_range_multiple
        ),
        output_range=widen(metadata.target_min, metadata.target_max, target_range_multiple),
        sklearn_mismatch=mismatch,
        twin=twin,
        fallback=fallback,
    )


TWINS_OFF = Fallback("twins_off", "compiled twins are off (STEWARD_TWINS=false)")


def _twin(
    root: Path, metadata: ModelMetadata, estimator: Any
) -> tuple[Twin | None, Fallback | None]:
    """The version's twin, checked and proved again on its reference sample; or why not."""
    from app.compiling import reference_matrix  # here: it imports the converters' modules

    compilation = metadata.compilation
    if compilation is None:
        return None, Fallback("not_compiled", "not compiled: run `steward compile`")
    record = compilation.twin
    if record is None:
        return None, Fallback(compilation.reason or "unsupported", compilation.message)
    try:
        data = read_checked(root, metadata, record.file, record.sha256)
        twin = open_twin(record, data, estimator, metadata)
    except ChecksumMismatch as exc:
        return None, Fallback("checksum_mismatch", str(exc))
    except Exception as exc:  # a missing file, or a runtime that cannot read it
        return None, Fallback("twin_unreadable", f"{record.file}: {exc}"[:500])
    reference = reference_matrix(metadata)
    try:
        if reference is not None:
            compare(twin, estimator, metadata, reference)
    except TwinMismatch as exc:
        return None, Fallback("twin_differs", f"on the reference sample: {exc}")
    except Exception as exc:  # the runtime failed on the rows it was proven on
        return None, Fallback("twin_differs", f"on the reference sample: {exc}"[:500])
    return twin, None
