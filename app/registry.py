"""The served models: loads each model's production version at startup, resolves requests.

A version that cannot be trusted (checksum mismatch, unreadable metadata, unpicklable artifact)
is refused: logged, kept in ``refusals`` (named by /readyz and a metric), and never served; the
other models still serve. Other versions load on first use, through the same checks.
"""

import contextlib
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import sklearn
from pydantic import BaseModel

from app.artifacts import (
    ChecksumMismatch,
    ModelMetadata,
    list_models,
    list_versions,
    load_estimator,
    read_aliases,
    read_metadata,
)
from app.errors import ArtifactError, ModelUnavailable, UnknownModel, UnknownVersion
from app.features import InputContract, widen

logger = logging.getLogger(__name__)

_MODEL_DETAIL = [{"field": "model", "message": "not a model of this server (GET /models)"}]


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

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return self.metadata.version

    @property
    def request_model(self) -> type[BaseModel]:
        return self.contract.request_model

    @cached_property
    def class_keys(self) -> list[str]:
        """The classes as JSON object keys, in predict_proba order."""
        return [str(c) for c in self.metadata.classes or ()]


@dataclass(frozen=True)
class Refusal:
    model: str
    version: int | None
    reason: str
    message: str


class Registry:
    def __init__(
        self,
        root: Path,
        max_instances: int,
        on_load: Callable[[LoadedModel, list[str]], None] | None = None,
        *,
        input_range_multiple: float = 0.0,
        target_range_multiple: float = 0.0,
    ) -> None:
        self.root = root
        self.max_instances = max_instances
        self.input_range_multiple = input_range_multiple
        self.target_range_multiple = target_range_multiple
        self.on_load = on_load
        self.refusals: dict[tuple[str, int | None], Refusal] = {}
        self._aliases: dict[str, dict[str, int]] = {}
        self._versions: dict[str, list[int]] = {}
        self._loaded: dict[tuple[str, int], LoadedModel] = {}
        self._metadata: dict[tuple[str, int], ModelMetadata] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the production version of every model in the registry."""
        for name in list_models(self.root):
            self._versions[name] = list_versions(self.root, name)
            try:
                self._aliases[name] = read_aliases(self.root, name)
            except ArtifactError as exc:
                self._refuse(name, None, "aliases_unreadable", exc)
                continue
            production = self._aliases[name].get("production")
            if production is None:
                logger.warning("model %s has no production version; not served by default", name)
                continue
            with contextlib.suppress(ModelUnavailable):  # refused and logged by _load
                self.resolve(name, str(production))

    @property
    def names(self) -> list[str]:
        return sorted(self._versions)

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self._aliases.get(name, {}))

    def versions(self, name: str) -> list[int]:
        if name not in self._versions:
            raise UnknownModel("no such model", _MODEL_DETAIL)
        return list(self._versions[name])

    def loaded_versions(self, name: str) -> list[LoadedModel]:
        return [m for (n, _), m in sorted(self._loaded.items()) if n == name]

    def default_name(self, configured: str | None) -> str:
        """The model behind POST /predict: the configured one, else the only one."""
        if configured:
            return configured
        if len(self._versions) == 1:
            return next(iter(self._versions))
        raise UnknownModel(
            "no default model: set STEWARD_DEFAULT_MODEL or use /predict/{model}",
            [{"field": "model", "message": f"one of {', '.join(self.names) or '(none)'}"}],
        )

    def cached(self, name: str, version: str | None = None) -> LoadedModel | None:
        """The loaded version for a request, if already in memory (no disk access).

        Raises UnknownModel / UnknownVersion / ModelUnavailable; None means "call resolve".
        """
        number = self._version_number(name, version)
        loaded = self._loaded.get((name, number))
        if loaded is not None:
            return loaded
        refusal = self.refusals.get((name, number))
        if refusal is not None:
            raise ModelUnavailable(refusal.message, [{"reason": refusal.reason}], model=name)
        return None

    def resolve(self, name: str, version: str | None = None) -> LoadedModel:
        """Like ``cached``, loading the version from disk when needed (blocking)."""
        loaded = self.cached(name, version)
        if loaded is not None:
            return loaded
        number = self._version_number(name, version)
        with self._lock:
            loaded = self._loaded.get((name, number))
            if loaded is None:
                if number not in self._versions[name]:
                    self._versions[name] = list_versions(self.root, name)  # registered since?
                    if number not in self._versions[name]:
                        raise UnknownVersion(f"model {name!r} has no such version", model=name)
                loaded = self._load(name, number)
        return loaded

    def metadata(self, name: str, version: int) -> ModelMetadata:
        """Metadata of any version, served or not (feedback for older predictions)."""
        key = (name, version)
        if key in self._loaded:
            return self._loaded[key].metadata
        if key not in self._metadata:
            self._metadata[key] = read_metadata(self.root, name, version)
        return self._metadata[key]

    def _version_number(self, name: str, version: str | None) -> int:
        if name not in self._versions:
            raise UnknownModel("no such model", _MODEL_DETAIL)
        aliases = self._aliases.get(name, {})
        ref = version or "production"
        if ref in aliases:
            return aliases[ref]
        if ref.isascii() and ref.isdigit():  # "²" and "٣" are digits to str.isdigit
            return int(ref)
        if version is None:
            raise UnknownVersion(f"model {name!r} has no production version", model=name)
        raise UnknownVersion(
            f"model {name!r} has no such version or alias",
            [{"field": "version", "message": "a version number or one of: " + ", ".join(aliases)}],
            model=name,
        )

    def _load(self, name: str, number: int) -> LoadedModel:
        try:
            metadata = read_metadata(self.root, name, number)
            if (metadata.name, metadata.version) != (name, number):
                raise ArtifactError(f"metadata names {metadata.name} v{metadata.version}")
        except ArtifactError as exc:
            raise self._refuse(name, number, "metadata_error", exc) from exc
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                estimator = load_estimator(self.root, metadata)
            if not callable(getattr(estimator, "predict", None)):
                raise ArtifactError("the artifact has no predict method")
        except ChecksumMismatch as exc:
            raise self._refuse(name, number, "checksum_mismatch", exc) from exc
        except Exception as exc:  # unpickling can raise anything
            raise self._refuse(name, number, "load_error", exc) from exc
        mismatch = None
        version_warnings = [str(w.message) for w in caught]
        if metadata.sklearn_version != sklearn.__version__ or version_warnings:
            mismatch = (
                f"saved with scikit-learn {metadata.sklearn_version}, running {sklearn.__version__}"
            )
            logger.warning("%s v%d: %s %s", name, number, mismatch, " ".join(version_warnings))
        loaded = LoadedModel(
            metadata=metadata,
            estimator=estimator,
            contract=metadata.contract(
                max_instances=self.max_instances, range_multiple=self.input_range_multiple
            ),
            output_range=widen(
                metadata.target_min, metadata.target_max, self.target_range_multiple
            ),
            sklearn_mismatch=mismatch,
        )
        self._loaded[(name, number)] = loaded
        if self.on_load is not None:
            aliases = [a for a, v in self._aliases.get(name, {}).items() if v == number]
            self.on_load(loaded, aliases)
        logger.info("loaded %s v%d", name, number)
        return loaded

    def _refuse(
        self, name: str, version: int | None, reason: str, exc: Exception
    ) -> ModelUnavailable:
        refusal = Refusal(name, version, reason, f"{name}: refused ({reason}): {exc}")
        self.refusals[(name, version)] = refusal
        logger.error("%s", refusal.message)
        return ModelUnavailable(refusal.message, [{"reason": reason}], model=name)
