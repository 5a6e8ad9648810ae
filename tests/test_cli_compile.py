"""`steward compile MODEL [VERSION]`: a twin proven and recorded (exit 0), no twin and why
(exit 1, as for a model or version not there), a wrong command line in one line (exit 2)."""

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from helpers import assert_one_line_error, churn_frame, run_cli
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression

from app.artifacts import METADATA, read_metadata, sha256_bytes
from app.registration import register_estimator
from app.training import train_csv


def _uncompile(root: Path, name: str, version: int) -> None:
    """The version's metadata as saved before twins, its twin file gone."""
    path = root / name / str(version) / METADATA
    data = json.loads(path.read_text())
    (root / name / str(version) / data.pop("compilation")["twin"]["file"]).unlink()
    path.write_text(json.dumps(data, indent=2))


def test_compile_rebuilds_a_demos_held_out_rows_and_records_the_twin(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _uncompile(models_dir, "iris", 1)
    assert read_metadata(models_dir, "iris", 1).compilation is None
    code, out, err = run_cli(capsys, "--models-dir", str(models_dir), "compile", "iris")
    assert (code, err) == (0, "")
    first, second = out.splitlines()
    assert first.startswith("iris: version 1 (production) accuracy=")
    assert second.startswith("  twin: onnxruntime ")
    assert " (float64): equal on 112 reference rows and 38 held-out rows (demo), largest " in out

    metadata = read_metadata(models_dir, "iris", 1)
    assert metadata.compilation is not None
    assert metadata.compilation.twin is not None
    twin = metadata.compilation.twin
    assert second == f"  twin: {metadata.compilation.message}"
    assert (twin.proof.held_out_rows, twin.proof.held_out_source) == (38, "demo")
    assert twin.proof.held_out_note is None
    data = (models_dir / "iris" / "1" / twin.file).read_bytes()
    assert sha256_bytes(data) == twin.sha256


def test_compile_a_named_csv_version_rebuilds_its_held_out_rows_from_its_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "churn.csv"
    churn_frame().to_csv(csv, index=False)
    root = tmp_path / "models"
    train_csv(root, csv, "churned", "churn")
    train_csv(root, csv, "churned", "churn")
    _uncompile(root, "churn", 2)
    v1 = (root / "churn" / "1" / METADATA).read_bytes()
    code, out, _ = run_cli(capsys, "--models-dir", str(root), "compile", "churn", "2")
    assert code == 0
    assert out.splitlines()[0].startswith("churn: version 2 accuracy=")
    assert "1 step(s) kept in scikit-learn" in out
    compilation = read_metadata(root, "churn", 2).compilation
    assert compilation is not None
    assert compilation.twin is not None
    proof = compilation.twin.proof
    assert (proof.held_out_rows, proof.held_out_source) == (30, "training_copy")
    assert (root / "churn" / "1" / METADATA).read_bytes() == v1  # untouched


def test_compile_a_registered_version_again_has_no_held_out_rows_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.column_stack([np.linspace(0, 1, 30), np.linspace(1, 0, 30) ** 2])
    y = np.where(x[:, 0] > 0.5, "hi", "lo")
    artifact, sample = tmp_path / "m.joblib", tmp_path / "sample.csv"
    joblib.dump(LogisticRegression().fit(x, y), artifact)
    pd.DataFrame(x, columns=["a", "b"]).to_csv(sample, index=False)
    root = tmp_path / "models"
    registered = register_estimator(root, artifact, "hilo", sample)
    assert registered.compilation is not None
    assert registered.compilation.twin is not None
    assert registered.compilation.twin.proof.held_out_source == "sample"

    code, out, _ = run_cli(capsys, "--models-dir", str(root), "compile", "hilo", "1")
    assert code == 0
    compilation = read_metadata(root, "hilo", 1).compilation
    assert compilation is not None
    assert compilation.twin is not None
    proof = compilation.twin.proof
    assert (proof.held_out_rows, proof.held_out_source) == (0, None)
    assert proof.held_out_note == (
        "hilo v1 is a registered model: trained elsewhere, on no rows kept"
    )
    assert proof.reference_rows > 0
    assert f"no held-out rows ({proof.held_out_note})" in out


def test_compile_an_unsupported_estimator_exits_1_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.column_stack([np.linspace(0, 1, 30), np.linspace(0, 1, 30) ** 2])
    artifact, sample = tmp_path / "kernel.joblib", tmp_path / "kernel.csv"
    joblib.dump(KernelRidge().fit(x, x[:, 0]), artifact)
    pd.DataFrame(x, columns=["a", "b"]).to_csv(sample, index=False)
    root = tmp_path / "models"
    register_estimator(root, artifact, "kernel", sample)
    code, out, err = run_cli(capsys, "--models-dir", str(root), "compile", "kernel")
    assert (code, err) == (1, "")
    first, second = out.splitlines()
    assert first.startswith("kernel: version 1 (production)")
    assert second.startswith("  no twin (unsupported): ")
    assert "KernelRidge" in second
    compilation = read_metadata(root, "kernel", 1).compilation
    assert compilation is not None
    assert (compilation.twin, compilation.reason) == (None, "unsupported")
    assert second == f"  no twin (unsupported): {compilation.message}"
    assert not any(p.name.startswith("twin.") for p in (root / "kernel" / "1").iterdir())


@pytest.mark.parametrize(
    ("argv", "code", "said"),
    [
        (["nope"], 1, "no model 'nope'"),  # as `steward promote` says it
        (["iris", "7"], 1, "iris has no version 7 (versions: 1)"),
        (["Bad Name!"], 2, "argument MODEL: a model name is"),
        (["iris", "0"], 2, "argument VERSION: a version is a whole number from 1"),
        (["iris", "-1"], 2, "argument VERSION: a version is a whole number from 1"),
        (["iris", "abc"], 2, "argument VERSION: a version is a whole number from 1"),
        ([], 2, "the following arguments are required: MODEL"),
    ],
)
def test_compile_wrong_names_are_one_line_and_change_nothing(
    models_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, said: str
) -> None:
    """A command line that is wrong: exit 2; a model or version not there: exit 1."""
    before = (models_dir / "iris" / "1" / METADATA).read_bytes()
    status, out, err = run_cli(capsys, "--models-dir", str(models_dir), "compile", *argv)
    assert (status, out) == (code, "")
    assert_one_line_error(err, said)
    assert (models_dir / "iris" / "1" / METADATA).read_bytes() == before


def test_compile_a_version_whose_artifact_was_changed_is_one_line_exit_1(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (models_dir / "iris" / "1" / "model.joblib").open("ab") as artifact:
        artifact.write(b"x")
    before = (models_dir / "iris" / "1" / METADATA).read_bytes()
    code, out, err = run_cli(capsys, "--models-dir", str(models_dir), "compile", "iris", "1")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "iris v1: sha256 of model.joblib is ", ", metadata says ")
    assert (models_dir / "iris" / "1" / METADATA).read_bytes() == before
