"""Where a version's training data came from, its kept copy, and how to read it back.

A demo version's rows are rebuilt from scikit-learn's bundled data; a CSV version's rows, after
--drop, are kept in its folder gzip-compressed (``training.csv.gz``) under a size cap. Either is
checked against the digest its metadata recorded (``rows_digest``) before a retraining starts
from it.
"""

import gzip
import io
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.artifacts import TRAINING_COPY, ModelMetadata, Task, read_checked, sha256_bytes
from app.errors import ArtifactError

DEMO_TARGET = "target"  # the label column of a demo's rows, as their digest reads them


@dataclass(frozen=True)
class Demo:
    """A demo model: the scikit-learn dataset its rows are rebuilt from, and its estimator."""

    name: str
    task: Task
    load: Callable[[], Any]
    estimator: Callable[[], Any]
    description: str


def demo_training_frame(
    metadata: ModelMetadata, demos: Sequence[Demo]
) -> tuple[pd.DataFrame, pd.Series]:
    """A demo version's rows (features, labels) rebuilt from scikit-learn's bundled data (the
    one of ``demos`` it names), checked against the digest its metadata recorded: what a
    retraining starts from."""
    where = f"{metadata.name} v{metadata.version}"
    data = metadata.training_data
    source = data.sources[0] if data and data.sources else None
    if source is None or source.kind != "demo":
        raise ArtifactError(f"{where} was not trained on a demo dataset")
    demo = next((d for d in demos if d.name == source.name), None)
    if demo is None:
        raise ArtifactError(f"{where}: no demo dataset {source.name!r} in this Steward")
    frame, labels = demo_rows(demo)
    if source.sha256 is not None and rows_digest(frame, labels) != source.sha256:
        raise ArtifactError(
            f"{where}: scikit-learn's {demo.name} data is not the data the version was "
            f"trained on (scikit-learn {metadata.sklearn_version} then)"
        )
    return frame, labels


def demo_rows(demo: Demo) -> tuple[pd.DataFrame, pd.Series]:
    """A demo's rows from scikit-learn's bundled data: features in snake case, then labels."""
    data = demo.load()
    frame = pd.DataFrame(data.data, columns=[_snake(n) for n in data.feature_names])
    target = data.target_names[data.target] if demo.task == "classification" else data.target
    return frame, pd.Series(target, name=DEMO_TARGET)


def rows_digest(frame: pd.DataFrame, labels: pd.Series) -> str:
    """sha256 of the rows as CSV text (features, then the labels' column, with a header): the
    same rows rebuilt, or read again from the same file, have the same digest."""
    return sha256_bytes(
        frame.assign(**{str(labels.name): labels.to_numpy()}).to_csv(index=False).encode()
    )


def keep_rows(rows: pd.DataFrame, max_bytes: int) -> tuple[str, dict[str, bytes], dict[str, Any]]:
    """The digest of a CSV version's rows (as CSV text), the version folder's gzip copy of them
    (none over ``max_bytes``), and what its metadata says of that copy. No gzip timestamp: the
    same rows give the same bytes."""
    text = rows.to_csv(index=False).encode()
    digest = sha256_bytes(text)
    if max_bytes == 0:
        return digest, {}, {"no_copy_reason": "copies are off (STEWARD_TRAINING_COPY_MAX_BYTES=0)"}
    compressed = gzip.compress(text, mtime=0)
    if len(compressed) > max_bytes:
        reason = (
            f"{len(compressed)} bytes compressed, over the cap of {max_bytes} "
            "(STEWARD_TRAINING_COPY_MAX_BYTES)"
        )
        return digest, {}, {"no_copy_reason": reason}
    kept = {"copy_file": TRAINING_COPY, "copy_sha256": sha256_bytes(compressed)}
    return digest, {TRAINING_COPY: compressed}, kept | {"copy_bytes": len(compressed)}


def training_copy(root: Path, metadata: ModelMetadata) -> tuple[pd.DataFrame, pd.Series]:
    """A CSV version's kept rows read back as (features, labels), as ``train_csv`` had them
    after --drop (date columns still text), refused unless the copy is the one its metadata
    describes: what a retraining starts from."""
    where = f"{metadata.name} v{metadata.version}"
    data = metadata.training_data
    source = data.sources[0] if data and data.sources else None
    if data is None or source is None or source.kind != "csv" or data.target is None:
        raise ArtifactError(f"{where} was not trained from a CSV file")
    if data.copy_file is None or data.copy_sha256 is None:
        why = data.no_copy_reason or "none was kept"
        raise ArtifactError(f"{where} keeps no copy of its training data ({why})")
    compressed = read_checked(root, metadata, data.copy_file, data.copy_sha256)
    try:
        text = gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as exc:  # its sha256 matched: metadata edited by hand
        raise ArtifactError(f"{where}: {data.copy_file} is not gzip data") from exc
    if source.sha256 is not None and sha256_bytes(text) != source.sha256:
        raise ArtifactError(f"{where}: {data.copy_file} does not hold the rows it was trained on")
    frame = pd.read_csv(io.BytesIO(text))
    labels = training_labels(frame.pop(data.target), metadata.task)
    return frame, labels


def training_labels(labels: pd.Series, task: Task) -> pd.Series:
    """A CSV's label column as a version learns it: a classifier's true/false values become the
    text ``"False"``/``"True"`` (its classes are JSON values feedback can name, and a boolean is
    not a class). ``train_csv``, ``training_copy`` and a retraining's ``--csv`` all read labels
    through this, so a version's own rows read back as it was trained on them."""
    if task != "classification" or labels.empty:
        return labels
    if labels.map(lambda label: isinstance(label, bool | np.bool_)).all():
        return labels.astype(str)
    return labels


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
