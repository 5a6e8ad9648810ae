"""The on-disk format: versions, checksums, aliases."""

import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from app.artifacts import (
    ALIASES,
    ALIASES_LOCK,
    ARTIFACT,
    ChecksumMismatch,
    ModelMetadata,
    list_models,
    list_versions,
    load_estimator,
    read_aliases,
    read_metadata,
    save_version,
    set_alias,
    sha256_bytes,
)
from app.errors import ArtifactError, UnknownVersion
from app.features import FeatureSpec


def fitted() -> LinearRegression:
    x = np.arange(20, dtype=float).reshape(10, 2)
    return LinearRegression().fit(x, x.sum(axis=1))


def draft(name: str = "adder") -> ModelMetadata:
    return ModelMetadata(
        name=name,
        task="regression",
        features=[FeatureSpec(name="a", dtype="float"), FeatureSpec(name="b", dtype="float")],
    )


def test_save_version_writes_artifact_metadata_and_checksum(tmp_path: Path) -> None:
    metadata = save_version(tmp_path, draft(), fitted())
    assert metadata.version == 1
    folder = tmp_path / "adder" / "1"
    assert sha256_bytes((folder / ARTIFACT).read_bytes()) == metadata.sha256
    assert read_metadata(tmp_path, "adder", 1) == metadata
    assert metadata.created_at is not None
    assert metadata.sklearn_version
    model = load_estimator(tmp_path, metadata)
    assert model.predict(np.array([[1.0, 2.0]]))[0] == pytest.approx(3.0)
    assert list_models(tmp_path) == ["adder"]
    hidden = [p.name for p in (tmp_path / "adder").iterdir() if p.name.startswith(".")]
    assert hidden == [ALIASES_LOCK]  # no staging folder or temporary file left behind


def test_versions_count_up_and_production_is_set_once(tmp_path: Path) -> None:
    for expected in (1, 2, 3):
        assert save_version(tmp_path, draft(), fitted()).version == expected
    assert list_versions(tmp_path, "adder") == [1, 2, 3]
    assert read_aliases(tmp_path, "adder") == {"production": 1}
    save_version(tmp_path, draft(), fitted(), promote=True)
    assert read_aliases(tmp_path, "adder") == {"production": 4}


def test_concurrent_saves_get_distinct_versions(tmp_path: Path) -> None:
    results: list[int] = []
    estimator = fitted()

    def save() -> None:
        results.append(save_version(tmp_path, draft(), estimator).version)

    threads = [threading.Thread(target=save) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    assert list_versions(tmp_path, "adder") == [1, 2, 3, 4, 5, 6]


def test_aliases_are_replaced_whole(tmp_path: Path) -> None:
    save_version(tmp_path, draft(), fitted())
    save_version(tmp_path, draft(), fitted())
    set_alias(tmp_path, "adder", "candidate", 2)
    assert read_aliases(tmp_path, "adder") == {"candidate": 2, "production": 1}
    listing = sorted(p.name for p in (tmp_path / "adder").iterdir())
    assert listing == [ALIASES_LOCK, "1", "2", ALIASES]
    with pytest.raises(UnknownVersion, match="no version 3"):
        set_alias(tmp_path, "adder", "production", 3)
    with pytest.raises(ArtifactError, match="unknown alias"):
        set_alias(tmp_path, "adder", "staging", 1)


def test_checksum_mismatch_is_detected(tmp_path: Path) -> None:
    metadata = save_version(tmp_path, draft(), fitted())
    path = tmp_path / "adder" / "1" / ARTIFACT
    path.write_bytes(path.read_bytes().replace(b"coef_", b"coef-"))
    with pytest.raises(ChecksumMismatch):
        load_estimator(tmp_path, metadata)


@pytest.mark.parametrize("name", ["", "Iris", "../etc", "a b", "-x", "x" * 65, "é", "iris\n"])
def test_bad_model_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ArtifactError, match="invalid model name"):
        save_version(tmp_path, draft(name), fitted())
