"""How an estimator becomes the bytes of a version's artifact and back: joblib or skops.

joblib is pickle: loading one runs whatever code the file names, so it is only as safe as
whoever could write the file. skops (``model.skops``) stores the estimator as data and builds
it back from types only: a file naming a type outside the allowlist is refused before anything
is built. The allowlist is the server's, never the file's: skops's own defaults (scikit-learn's
estimators, NumPy and SciPy types, the builtins), SKOPS_TRUSTED_TYPES below, and the types an
operator adds with STEWARD_SKOPS_TRUSTED_TYPES. ``skops.io.get_untrusted_types`` is used to say
what a file needs, never to decide to trust it.

joblib and skops are imported by the functions that use them, so listing the registry stays
light.
"""

import io
from dataclasses import dataclass
from typing import Any, Literal, get_args

from app.errors import ArtifactError
from app.settings import Settings

ArtifactFormat = Literal["joblib", "skops"]
FORMATS: tuple[ArtifactFormat, ...] = get_args(ArtifactFormat)
FILES: dict[ArtifactFormat, str] = {"joblib": "model.joblib", "skops": "model.skops"}

SKOPS_TRUSTED_TYPES = ("numpy.dtype",)
"""Trusted beyond skops's defaults: what the models `steward train` fits need (SimpleImputer
keeps a ``numpy.dtype``). Tree types (``sklearn.tree._tree.Tree``, HistGradientBoosting's
``TreePredictor``) are left out on purpose: skops distrusts them because a crafted file can make
``predict`` read out of bounds. An operator who registers tree models adds them, knowingly,
with STEWARD_SKOPS_TRUSTED_TYPES."""


@dataclass(frozen=True)
class ArtifactPolicy:
    """Which artifacts a process may load: joblib at all (``allow_pickle``), and the types a
    skops file may hold besides skops's defaults and SKOPS_TRUSTED_TYPES."""

    allow_pickle: bool = True
    skops_trusted_types: tuple[str, ...] = ()

    @classmethod
    def of(cls, settings: Settings) -> "ArtifactPolicy":
        return cls(settings.allow_pickle, tuple(settings.skops_trusted_types))

    @property
    def trusted(self) -> list[str]:
        """The types passed to ``skops.io.loads`` as trusted (skops adds its defaults)."""
        return sorted({*SKOPS_TRUSTED_TYPES, *self.skops_trusted_types})


class PickleRefused(ArtifactError):
    """A joblib (pickle) artifact, and this process refuses pickle (STEWARD_ALLOW_PICKLE)."""


class UntrustedTypes(ArtifactError):
    """A skops artifact names types outside the allowlist: nothing of it was built."""

    def __init__(self, message: str, types: list[str]) -> None:
        super().__init__(message)
        self.types = types


def dump(estimator: Any, artifact_format: ArtifactFormat) -> bytes:
    """The bytes of ``estimator`` in ``artifact_format``."""
    if artifact_format == "skops":
        import skops.io

        return bytes(skops.io.dumps(estimator))
    import joblib

    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    return buffer.getvalue()


def load(
    data: bytes, artifact_format: ArtifactFormat, policy: ArtifactPolicy, name: str, version: int
) -> Any:
    """The estimator in ``data`` (version ``version`` of ``name``), whose checksum the caller
    has verified. PickleRefused for joblib when the policy refuses pickle, UntrustedTypes for a
    skops file holding a type outside the allowlist; anything else a damaged file raises, as is.
    """
    if artifact_format == "joblib":
        refuse_pickle(policy, name, version)
        import joblib

        return joblib.load(io.BytesIO(data))
    return load_skops(data, policy, f"{name} v{version}: {FILES['skops']}")


def load_skops(data: bytes, policy: ArtifactPolicy, where: str) -> Any:
    """The object in a skops file's ``data``, built only if ``policy`` trusts every type it
    names; else UntrustedTypes (``where`` starts its message)."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops.io.loads(data, trusted=policy.trusted)
    except UntrustedTypesFoundException:
        types = untrusted_types(data, policy)
        raise UntrustedTypes(
            f"{where} holds types outside the allowlist: {', '.join(types)} (add them to "
            "STEWARD_SKOPS_TRUSTED_TYPES only if you trust the file's source)",
            types,
        ) from None


def refuse_pickle(policy: ArtifactPolicy, name: str, version: int) -> None:
    """PickleRefused unless the policy allows pickle."""
    if not policy.allow_pickle:
        raise PickleRefused(
            f"{name} v{version}: a joblib (pickle) artifact, and STEWARD_ALLOW_PICKLE=false "
            f"(`steward convert {name} {version} --format skops --promote` writes a skops version "
            "of it and serves it)"
        )


def untrusted_types(data: bytes, policy: ArtifactPolicy) -> list[str]:
    """The types of a skops file that this policy would refuse (none: it loads). Reads the
    file's schema only; builds nothing."""
    import skops.io

    needed = skops.io.get_untrusted_types(data=data)
    return sorted(set(needed) - set(policy.trusted))
