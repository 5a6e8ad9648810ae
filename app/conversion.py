"""A version's estimator stored in another format, as a new version: ``steward convert``.

A version's folder never changes once written, and a server keeps a version's refusal until it
restarts (app/registry.py): so converting does not rewrite a version in place, it saves the next
version of the model, holding the same estimator in the other format and the same metadata (input
contract, metrics, reference profile, training data and its kept copy, gate decision, compiled
twin), with ``converted_from`` naming the source. Before anything is written the new artifact is
built back from its bytes and must answer exactly what the source answers on the version's
reference sample (labels, and probabilities bit for bit); otherwise nothing is saved. It is built
with whatever types it names: these bytes were made here, from an estimator already in memory;
whether a server will trust them is ``untrusted_types``'s to say. Aliases stay where they are
unless asked (``promote``): moving production is a promote.

Reading a joblib source unpickles it whatever the policy says of pickle: converting is how a
registry leaves pickle, and the file is checked against its sha256 first. Writing joblib is
refused when the policy refuses pickle: the server would refuse what it wrote.
"""

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.artifact_formats import (
    ArtifactFormat,
    ArtifactPolicy,
    dump,
    load,
    refuse_pickle,
    untrusted_types,
)
from app.artifacts import (
    TRAINING_COPY,
    Compiled,
    ModelMetadata,
    load_estimator,
    read_checked,
    read_metadata,
    save_version,
)
from app.compiling import reference_matrix
from app.errors import ArtifactError


def convert_version(
    root: Path,
    name: str,
    version: int,
    artifact_format: ArtifactFormat,
    *,
    policy: ArtifactPolicy,
    promote: bool = False,
) -> ModelMetadata:
    """Save version ``version`` of ``name`` again as a new version in ``artifact_format``;
    returns the new version's metadata. ArtifactError when the source cannot be read, is
    already in that format, or the converted estimator does not answer as the source does."""
    source = read_metadata(root, name, version)
    where = f"{name} v{version}"
    if source.artifact_format == artifact_format:
        raise ArtifactError(f"{where} is already stored as {artifact_format}")
    if artifact_format == "joblib":
        refuse_pickle(policy, name, source.version)
    estimator = load_estimator(root, source, replace(policy, allow_pickle=True))
    data = dump(estimator, artifact_format)
    own = untrusted_types(data, policy) if artifact_format == "skops" else []
    trusting = replace(policy, skops_trusted_types=(*policy.skops_trusted_types, *own))
    converted = load(data, artifact_format, trusting, name, version)
    _same_answers(where, source, estimator, converted)
    extra = {}
    training = source.training_data
    if training is not None and training.copy_file == TRAINING_COPY and training.copy_sha256:
        extra[TRAINING_COPY] = read_checked(root, source, TRAINING_COPY, training.copy_sha256)
    draft = source.model_copy(
        update={"artifact_format": artifact_format, "converted_from": source.version}
    )
    return save_version(
        root, draft, estimator, promote=promote, extra_files=extra, compiled=_twin(root, source)
    )


def _same_answers(where: str, metadata: ModelMetadata, source: Any, converted: Any) -> None:
    """ArtifactError unless ``converted`` answers exactly what ``source`` answers on the
    version's reference sample (its typical row when it has no reference profile)."""
    rows = reference_matrix(metadata)
    if rows is None:
        contract = metadata.contract()
        rows = contract.matrix([contract.typical_row(metadata.medians())])
    methods = ["predict"] + (["predict_proba"] if metadata.has_proba else [])
    for method in methods:
        expected = getattr(source, method)(rows)
        got = getattr(converted, method)(rows)
        if not np.array_equal(np.asarray(expected), np.asarray(got)):
            raise ArtifactError(
                f"{where}: the converted estimator's {method} differs from the source's on the "
                "reference sample; nothing was written"
            )


def _twin(root: Path, source: ModelMetadata) -> Compiled | None:
    """The source's compilation, and its twin's bytes (checked): the twin was proven against
    this very estimator. None when the source was never compiled."""
    compilation = source.compilation
    if compilation is None:
        return None
    twin = compilation.twin
    if twin is None:
        return compilation, None
    return compilation, read_checked(root, source, twin.file, twin.sha256)
