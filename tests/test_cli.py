"""The `steward` command: each subcommand, and errors as one line with a non-zero exit."""

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from app.artifacts import list_versions, read_aliases
from app.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_demo_then_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = str(tmp_path / "models")
    code, out, _ = run(capsys, "--models-dir", models, "train", "demo")
    assert code == 0
    assert "iris: version 1 (production) accuracy=" in out
    assert "diabetes: version 1 (production) mae=" in out

    code, out, _ = run(capsys, "--models-dir", models, "train", "demo", "--if-missing")
    assert (code, out) == (0, "demo models already present\n")

    code, out, _ = run(capsys, "--models-dir", models, "train", "demo")
    assert "iris: version 2 accuracy" in out  # a new version, production unchanged
    code, out, _ = run(capsys, "--models-dir", models, "train", "demo", "--promote")
    assert "iris: version 3 (production)" in out

    code, out, _ = run(capsys, "--models-dir", models, "models")
    assert code == 0
    assert out.splitlines() == [
        "MODEL          VERSIONS  ALIASES",
        "breast-cancer  1,2,3     production=3",
        "diabetes       1,2,3     production=3",
        "iris           1,2,3     production=3",
    ]


def test_train_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "data.csv"
    x = np.linspace(0, 1, 40)
    pd.DataFrame({"x": x, "label": np.where(x > 0.5, "hi", "lo")}).to_csv(csv, index=False)
    models = tmp_path / "models"
    argv = ["--models-dir", str(models), "train", "--csv", str(csv), "--target", "label"]
    code, out, _ = run(capsys, *argv, "--name", "hilo")
    assert code == 0
    assert out.startswith("hilo: version 1 (production) accuracy=")
    code, out, _ = run(capsys, *argv, "--name", "hilo-reg", "--task", "regression")
    assert code == 1  # text target cannot be regressed


def test_register(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.linspace(0, 1, 40).reshape(20, 2)
    artifact = tmp_path / "m.joblib"
    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0.5), artifact)
    sample = tmp_path / "sample.csv"
    pd.DataFrame(x, columns=["p", "q"]).to_csv(sample, index=False)
    models = tmp_path / "models"
    base = ["--models-dir", str(models), "register", str(artifact), "--sample", str(sample)]
    assert run(capsys, *base, "--name", "flag")[0] == 0
    assert run(capsys, *base, "--name", "flag")[0] == 0
    assert read_aliases(models, "flag") == {"production": 1}
    code, out, _ = run(capsys, *base, "--name", "flag", "--promote")
    assert (code, out) == (0, "flag: version 3 (production)\n")
    assert list_versions(models, "flag") == [1, 2, 3]


@pytest.mark.parametrize(
    "argv",
    [
        ["train"],
        ["train", "demo", "--csv", "x.csv"],
        ["train", "--csv", "missing.csv", "--target", "y", "--name", "m"],
        ["register", "missing.joblib", "--name", "m", "--sample", "missing.csv"],
    ],
)
def test_errors_are_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, "--models-dir", str(tmp_path), *argv)
    assert code == 1
    assert out == ""
    assert err.startswith("steward: error: ")
    assert err.count("\n") == 1


def test_empty_registry_listing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--models-dir", str(tmp_path / "none"), "models")
    assert code == 0
    assert out.startswith("no models in ")


def test_promote_and_roll_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = str(tmp_path / "models")
    run(capsys, "--models-dir", models, "train", "demo")
    run(capsys, "--models-dir", models, "train", "demo")
    code, out, _ = run(capsys, "--models-dir", models, "promote", "iris", "2")
    assert (code, out.split(" (")[0]) == (0, "iris: production -> version 2")
    assert read_aliases(tmp_path / "models", "iris") == {"production": 2}
    assert (
        run(capsys, "--models-dir", models, "promote", "iris", "1", "--alias", "candidate")[0] == 0
    )
    assert run(capsys, "--models-dir", models, "promote", "iris", "1")[0] == 0  # roll back
    assert read_aliases(tmp_path / "models", "iris") == {"candidate": 1, "production": 1}
    code, _, err = run(capsys, "--models-dir", models, "promote", "iris", "9")
    assert (code, err) == (1, "steward: error: iris has no version 9\n")
