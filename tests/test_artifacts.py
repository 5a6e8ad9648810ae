"""The on-disk format: versions, checksums, aliases."""

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import METADATA_BEFORE_TRAINING_DATA
from sklearn.linear_model import LinearRegression

from app.aliases import ALIASES, ALIASES_LOCK, read_aliases, set_alias
from app.artifacts import (
    ARTIFACT,
    METADATA,
    TRAINING_COPY,
    ChecksumMismatch,
    ModelMetadata,
    list_models,
    list_versions,
    load_estimator,
    read_checked,
    read_metadata,
    save_version,
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


def test_metadata_from_before_training_data_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "line" / "1"
    folder.mkdir(parents=True)
    (folder / METADATA).write_text(METADATA_BEFORE_TRAINING_DATA)
    metadata = read_metadata(tmp_path, "line", 1)
    assert metadata.training_data is None
    assert (metadata.training_rows, metadata.metrics["r2"]) == (9, 1.0)


def test_extra_files_are_saved_with_the_version(tmp_path: Path) -> None:
    metadata = save_version(tmp_path, draft(), fitted(), extra_files={TRAINING_COPY: b"rows"})
    assert sorted(p.name for p in (tmp_path / "adder" / "1").iterdir()) == [
        METADATA, ARTIFACT, TRAINING_COPY,
    ]  # fmt: skip
    assert read_checked(tmp_path, metadata, TRAINING_COPY, sha256_bytes(b"rows")) == b"rows"


def test_read_checked_refuses_a_changed_or_missing_file(tmp_path: Path) -> None:
    metadata = save_version(tmp_path, draft(), fitted(), extra_files={TRAINING_COPY: b"rows"})
    path = tmp_path / "adder" / "1" / TRAINING_COPY
    path.write_bytes(b"rowz")
    with pytest.raises(ChecksumMismatch) as info:
        read_checked(tmp_path, metadata, TRAINING_COPY, sha256_bytes(b"rows"))
    assert str(info.value) == (
        f"adder v1: sha256 of {TRAINING_COPY} is {sha256_bytes(b'rowz')}, "
        f"metadata says {sha256_bytes(b'rows')}"
    )
    path.unlink()
    with pytest.raises(ArtifactError, match=f"^adder v1: {TRAINING_COPY} is missing$"):
        read_checked(tmp_path, metadata, TRAINING_COPY, sha256_bytes(b"rows"))


@pytest.mark.parametrize("file_name", [METADATA, ARTIFACT, "../escape", ".hidden", "a/b", ""])
def test_extra_files_cannot_replace_or_escape_the_version(tmp_path: Path, file_name: str) -> None:
    with pytest.raises(ArtifactError, match="cannot be a version's extra file"):
        save_version(tmp_path, draft(), fitted(), extra_files={file_name: b"x"})
    assert list_versions(tmp_path, "adder") == []
    assert not (tmp_path / "escape").exists()


def test_a_failure_mid_save_leaves_no_half_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fails (ENOSPC) while the staged files are flushed, after every file was
    written: no version appears, the staging folder is removed, the next save is version 1."""

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_version(tmp_path, draft(), fitted(), extra_files={TRAINING_COPY: b"rows"})
    monkeypatch.undo()
    assert list_versions(tmp_path, "adder") == []
    assert list((tmp_path / "adder").iterdir()) == []  # the staging folder was removed
    assert not (tmp_path / "adder" / ALIASES).exists()
    metadata = save_version(tmp_path, draft(), fitted(), extra_files={TRAINING_COPY: b"rows"})
    assert metadata.version == 1
    assert (tmp_path / "adder" / "1" / TRAINING_COPY).read_bytes() == b"rows"


CRASH_MID_SAVE = """
import os, sys
from pathlib import Path
import numpy as np
from sklearn.linear_model import LinearRegression
from app.artifacts import ModelMetadata, save_version
from app.features import FeatureSpec

x = np.arange(20, dtype=float).reshape(10, 2)
draft = ModelMetadata(
    name="adder", task="regression",
    features=[FeatureSpec(name="a", dtype="float"), FeatureSpec(name="b", dtype="float")],
)
os.fsync = lambda fd: os._exit(9)  # the process dies with its files staged, not yet renamed
save_version(Path(sys.argv[1]), draft, LinearRegression().fit(x, x.sum(axis=1)),
             extra_files={"training.csv.gz": b"rows"})
"""


def test_a_process_killed_mid_save_leaves_no_version(tmp_path: Path) -> None:
    """Killed between writing its files and renaming them into place, a save leaves only a
    hidden staging folder: no version, no alias; the next save is version 1."""
    done = subprocess.run([sys.executable, "-c", CRASH_MID_SAVE, str(tmp_path)], check=False)
    assert done.returncode == 9
    staged = list((tmp_path / "adder").iterdir())
    assert len(staged) == 1
    assert staged[0].name.startswith(".staging-")
    assert sorted(p.name for p in staged[0].iterdir()) == [METADATA, ARTIFACT, TRAINING_COPY]
    assert list_versions(tmp_path, "adder") == []
    assert list_models(tmp_path) == ["adder"]
    assert read_aliases(tmp_path, "adder") == {}
    assert save_version(tmp_path, draft(), fitted()).version == 1
