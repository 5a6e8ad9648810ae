"""Which rows a version is fitted on: the one split of its data, and those rows rebuilt later.

- ``split_rows``: the split ``fit_version`` takes (TEST_SIZE held out, seed SEED, stratified
  by class when every class can be); ``split_positions`` replays a recorded split (DataSplit),
  the one the retraining gate sets its held_out rows aside with (app/gate_rows.py).
- ``stored_training_matrix``: a version's training part rebuilt from what is stored (a demo's
  rows from scikit-learn, a CSV version's kept copy), as the matrix ``fit_version`` profiled,
  for a profile of a version saved before the profile's format changed. Only when the stored
  rows are provably those it was fitted on (their digests, the row counts); ArtifactError with
  the one-line reason otherwise. Nothing is written: a version's folder never changes.
"""

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from app.artifacts import DataSplit, ModelMetadata, Task, TrainingData
from app.errors import ArtifactError
from app.feature_survey import read_frame
from app.training_data import demo_training_frame, training_copy

TEST_SIZE = 0.25
SEED = 0


def split_rows(
    frame: pd.DataFrame, labels: pd.Series, task: Task
) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series, bool]:
    """The training and held-out parts of a version's rows (features, then labels), and whether
    the split is stratified: by class for a classifier with two rows of each class and a
    held-out part with room for every class."""
    counts = labels.value_counts()
    test_rows = math.ceil(len(labels) * TEST_SIZE)
    stratified = task == "classification" and counts.min() >= 2 and test_rows >= len(counts)
    split = DataSplit(test_size=TEST_SIZE, seed=SEED, stratified=stratified)
    train, test = split_positions(labels, split)
    return frame.iloc[train], frame.iloc[test], labels.iloc[train], labels.iloc[test], stratified


def split_positions(labels: pd.Series, split: DataSplit) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the training rows and of the held-out rows that ``split`` takes of rows
    with these labels: which rows go where depends on the row count, the size, the seed and
    (stratified) the labels only. ValueError when the labels cannot be stratified."""
    positions: list[np.ndarray] = train_test_split(
        np.arange(len(labels)),
        test_size=split.test_size,
        random_state=split.seed,
        stratify=labels if split.stratified else None,
    )
    return positions[0], positions[1]


StoredRows = Literal["demo", "training_copy"]


def stored_training_matrix(root: Path, metadata: ModelMetadata) -> tuple[np.ndarray, StoredRows]:
    """The training part of a version's rows rebuilt from what is stored, as ``fit_version``
    profiled it (its contract's matrix, features in the metadata's order), and where the rows
    came from: ``"demo"`` (scikit-learn's bundled data, checked against the recorded digest) or
    ``"training_copy"`` (the CSV rows its folder keeps, checked against their checksums).

    ArtifactError, one line, for a version whose rows cannot be had that way: one saved before
    versions recorded their data, a registered model (trained elsewhere), a retrained one (part
    of its rows are feedback in the prediction store), a CSV version that keeps no copy, a copy
    or a demo dataset that is not the recorded one, or rows that do not split into as many
    training rows as it was fitted on."""
    train_x, _, source = _stored_parts(root, metadata)
    return np.asarray(metadata.contract().matrix(_frame_rows(train_x))), source


def stored_held_out_matrix(root: Path, metadata: ModelMetadata) -> tuple[Any, StoredRows]:
    """The held-out part of a version's rows, the ones it was not fitted on, as its estimator
    takes them; rebuilt and refused as ``stored_training_matrix`` says."""
    _, test_x, source = _stored_parts(root, metadata)
    return metadata.contract().matrix(_frame_rows(test_x)), source


def _stored_parts(
    root: Path, metadata: ModelMetadata
) -> tuple[pd.DataFrame, pd.DataFrame, StoredRows]:
    """The training and held-out parts of a version's stored rows (see above)."""
    from app.training import DEMOS  # here: app.training imports this module

    # version 0: a draft not saved yet (retraining compiles it before save_version numbers it)
    where = (
        f"{metadata.name} v{metadata.version}"
        if metadata.version
        else f"{metadata.name}'s new version"
    )
    data = metadata.training_data
    if data is None:
        raise ArtifactError(f"{where} records no training data (saved before versions did)")
    kinds = [s.kind for s in data.sources]
    if "feedback" in kinds or data.base_split is not None:
        raise ArtifactError(
            f"{where} was retrained: part of its rows are labelled predictions in the prediction "
            "store, not stored with it"
        )
    if kinds == ["sample"]:
        raise ArtifactError(f"{where} is a registered model: trained elsewhere, on no rows kept")
    source: StoredRows
    if kinds == ["demo"]:
        frame, labels = demo_training_frame(metadata, DEMOS)
        source = "demo"
    elif kinds == ["csv"]:
        frame, labels = training_copy(root, metadata)
        try:
            frame = read_frame(frame, data.dates)
        except ValueError as exc:
            raise ArtifactError(f"{where}: {data.copy_file}: {exc}") from exc
        source = "training_copy"
    else:
        raise ArtifactError(
            f"{where}: no stored rows for data from {', '.join(kinds) or 'nowhere'}"
        )
    names = [f.name for f in metadata.features]
    if sorted(map(str, frame.columns)) != sorted(names):
        raise ArtifactError(f"{where}: its stored rows do not have its features' columns")
    train_x, test_x = _split_parts(
        where, frame[names], labels, metadata.task, data, metadata.training_rows
    )
    return train_x, test_x, source


def _frame_rows(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    from app.training import frame_rows  # here: app.training imports this module

    return frame_rows(frame)


def _split_parts(
    where: str,
    frame: pd.DataFrame,
    labels: pd.Series,
    task: Task,
    data: TrainingData,
    recorded_rows: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training and held-out parts of the rows by the version's recorded split (today's
    rule when it records none), refused unless the training part has as many rows as the
    version was fitted on."""
    try:
        if data.split is None:
            train_x, test_x = split_rows(frame, labels, task)[:2]
        else:
            train, test = split_positions(labels, data.split)
            train_x, test_x = frame.iloc[train], frame.iloc[test]
    except ValueError as exc:  # a recorded stratified split these labels cannot take
        raise ArtifactError(f"{where}: cannot split its stored rows as it was: {exc}") from exc
    recorded = {rows for rows in (recorded_rows, data.training_rows) if rows}
    if recorded != {len(train_x)}:
        said = " or ".join(str(rows) for rows in sorted(recorded)) or "none"
        raise ArtifactError(
            f"{where}: the stored data does not give the rows it was fitted on ({len(train_x)} "
            f"training rows rebuilt, {said} recorded)"
        )
    return train_x, test_x
