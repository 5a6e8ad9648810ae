"""The `steward` command: each subcommand, and errors as one line with a non-zero exit."""

import os
import pickle
import signal
import socket
import subprocess
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from helpers import assert_one_line_error, run_cli, wait_until
from server import STEWARD, free_port, serving
from sklearn.linear_model import LinearRegression, LogisticRegression

from app import __version__
from app.aliases import read_aliases
from app.artifacts import list_versions, read_metadata
from app.errors import InvalidSettings
from app.main import create_app
from app.settings import Settings, load_settings


def test_train_demo_then_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = str(tmp_path / "models")
    code, out, _ = run_cli(capsys, "--models-dir", models, "train", "demo")
    assert code == 0
    assert "iris: version 1 (production) accuracy=" in out
    assert "diabetes: version 1 (production) mae=" in out

    code, out, _ = run_cli(capsys, "--models-dir", models, "train", "demo", "--if-missing")
    assert (code, out) == (0, "demo models already present\n")

    code, out, _ = run_cli(capsys, "--models-dir", models, "train", "demo")
    assert "iris: version 2 accuracy" in out  # a new version, production unchanged
    code, out, _ = run_cli(capsys, "--models-dir", models, "train", "demo", "--promote")
    assert "iris: version 3 (production)" in out

    code, out, _ = run_cli(capsys, "--models-dir", models, "models")
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
    code, out, _ = run_cli(capsys, *argv, "--name", "hilo")
    assert code == 0
    assert out.startswith("hilo: version 1 (production) accuracy=")
    code, out, _ = run_cli(capsys, *argv, "--name", "hilo-reg", "--task", "regression")
    assert code == 1  # text target cannot be regressed


def test_train_csv_drop_and_date(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "crm.csv"
    x = np.linspace(0, 1, 40)
    pd.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in range(40)],
            "signup": [f"2024-03-{i % 28 + 1:02d}" for i in range(40)],
            "x": x,
            "label": np.where(x > 0.5, "hi", "lo"),
        }
    ).to_csv(csv, index=False)
    models = tmp_path / "models"
    argv = ["--models-dir", str(models), "train", "--csv", str(csv), "--target", "label"]
    code, _, err = run_cli(capsys, *argv, "--name", "crm")
    assert code == 1
    assert err.count("\n") == 1
    assert "'customer_id' looks like an identifier" in err
    code, out, _ = run_cli(
        capsys, *argv, "--name", "crm", "--drop", "customer_id", "--date", "signup"
    )
    assert code == 0, out
    features = read_metadata(models, "crm", 1).features
    assert [(f.name, f.dtype) for f in features] == [("signup", "date"), ("x", "float")]
    assert run_cli(capsys, "train", "demo", "--drop", "x")[0] == 2


def test_register(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.linspace(0, 1, 40).reshape(20, 2)
    artifact = tmp_path / "m.joblib"
    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0.5), artifact)
    sample = tmp_path / "sample.csv"
    pd.DataFrame(x, columns=["p", "q"]).to_csv(sample, index=False)
    models = tmp_path / "models"
    base = ["--models-dir", str(models), "register", str(artifact), "--sample", str(sample)]
    assert run_cli(capsys, *base, "--name", "flag")[0] == 0
    assert run_cli(capsys, *base, "--name", "flag")[0] == 0
    assert read_aliases(models, "flag") == {"production": 1}
    code, out, _ = run_cli(capsys, *base, "--name", "flag", "--promote")
    assert code == 0
    assert out.startswith("flag: version 3 (production)\n  twin: onnxruntime ")
    assert "equal on 20 reference rows and 20 held-out rows (sample)" in out
    assert list_versions(models, "flag") == [1, 2, 3]
    metadata = read_metadata(models, "flag", 3)
    assert (metadata.sample_rows, metadata.training_rows) == (20, 0)  # not trained here
    assert metadata.metrics == {}  # the sample carried no target


def test_empty_registry_listing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--models-dir", str(tmp_path / "none"), "models")
    assert code == 0
    assert out.startswith("no models in ")


def test_promote_and_roll_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = str(tmp_path / "models")
    run_cli(capsys, "--models-dir", models, "train", "demo")
    run_cli(capsys, "--models-dir", models, "train", "demo")
    code, out, _ = run_cli(capsys, "--models-dir", models, "promote", "iris", "2")
    assert (code, out) == (
        0,
        "iris: production -> version 2 (was 1; running servers swap to it within "
        "STEWARD_RELOAD_INTERVAL_SECONDS)\n",
    )
    assert read_aliases(tmp_path / "models", "iris") == {"production": 2}
    code, out, _ = run_cli(capsys, "--models-dir", models, "promote", "iris", "2")
    assert (code, out) == (0, "iris: production is already version 2\n")
    code, out, _ = run_cli(
        capsys, "--models-dir", models, "promote", "iris", "1", "--alias", "candidate"
    )
    assert (code, out.split(" (")[0]) == (0, "iris: candidate -> version 1")
    assert "(was unset;" in out
    code, out, _ = run_cli(capsys, "--models-dir", models, "rollback", "iris")
    assert (code, out.split(" (")[0]) == (0, "iris: rolled back, production -> version 1")
    assert read_aliases(tmp_path / "models", "iris") == {"candidate": 1, "production": 1}
    code, out, err = run_cli(capsys, "--models-dir", models, "rollback", "iris")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "iris: no earlier production version to roll back to")
    code, _, err = run_cli(capsys, "--models-dir", models, "promote", "iris", "9")
    assert (code, err) == (1, "steward: error: iris has no version 9 (versions: 1, 2)\n")


def _env(variables: dict[str, str]) -> dict[str, str]:
    """The environment without any STEWARD_* variable of the caller's, plus ``variables``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
    return clean | variables


# --- usage errors: one line pointing to --help, exit status 2 ------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no command given"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["models", "--verbose"], "unrecognized arguments: --verbose"),
        (["--models-dir"], "argument --models-dir: expected one argument"),
        (["train"], "missing --csv, --target, --name"),
        (["train", "--csv", "{csv}"], "missing --target, --name"),
        (["train", "demo", "--name", "x"], "`train demo` takes no --name"),
        (["train", "--csv", "missing.csv", "--target", "y", "--name", "m"], "no such file"),
        (["train", "--csv", "{dir}", "--target", "y", "--name", "m"], "not a file"),
        (["train", "--csv", "{csv}", "--target", "y", "--name", "Bad Name"], "a model name is"),
        (["train", "--task", "clustering"], "invalid choice: 'clustering'"),
        (["register", "missing.joblib", "--name", "m", "--sample", "{csv}"], "no such file"),
        (["register", "{dir}", "--name", "m", "--sample", "{csv}"], "not a file"),
        (["register", "{csv}", "--name", "m", "--sample", "{dir}"], "not a file"),
        (["register", "{csv}", "--sample", "{csv}"], "required: --name"),
        (["promote", "iris", "two"], "argument VERSION: a version is a whole number"),
        (["promote", "iris", "-1"], "argument VERSION: a version is a whole number"),
        (["promote", "iris", "1.5"], "argument VERSION: a version is a whole number"),
        (["promote", "../../etc", "1"], "argument MODEL: a model name is"),
        (["promote", "iris", "1", "--alias", "staging"], "invalid choice: 'staging'"),
        (["promote", "iris"], "required: VERSION"),
        (["rollback"], "required: MODEL"),
        (["rollback", "iris", "2"], "unrecognized arguments: 2"),
        (["rollback", "Iris"], "argument MODEL: a model name is"),
        (["versions"], "required: MODEL"),
        (["versions", "../x"], "argument MODEL: a model name is"),
        (["status", "x" * 100], "argument MODEL: a model name is"),
        (["status", "--url", "file:///etc/passwd"], "argument --url: a URL is http://"),
        (["status", "--url", "localhost:8000"], "argument --url: a URL is http://"),
        (["status", "--url", "http://"], "argument --url: a URL is http://"),
        (["status", "--url", "http://[::1"], "argument --url: a URL is http://"),
        (["serve", "--port", "http"], "argument --port: a port is a whole number"),
        (["serve", "--port", "70000"], "argument --port: a port is a whole number"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text("x,y\n1,2\n")
    filled = [a.format(csv=csv, dir=tmp_path) for a in argv]
    code, out, err = run_cli(capsys, "--models-dir", str(tmp_path / "models"), *filled)
    assert (code, out) == (2, "")
    assert_one_line_error(err, message, "--help`)")
    assert "usage:" not in err
    assert not (tmp_path / "models").exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "--version") == (0, f"steward {__version__}\n", "")


def test_help_is_written_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: steward ")
    assert "Steward serves scikit-learn models over HTTP" in out
    for command in COMMANDS:
        assert f"    {command} " in out
    assert "examples:" in out
    assert "STEWARD_* environment variables" in out
    assert "exit status: 0 done, 1 the command failed, 2 the command line is wrong" in out
    assert "call one function" not in out  # the module's docstring is for its readers


COMMANDS = ("train", "register", "models", "promote", "rollback", "versions", "status", "serve")


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_its_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: steward {command} ")
    assert "--models-dir DIR" in out
    description = out.split("\n\n")[1]
    assert len(description) > 20, out
    if command != "models":
        assert f"examples:\n  steward {command}" in out


# --- --models-dir before or after the command ----------------------------------------------


def test_models_dir_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "line.csv"
    x = np.linspace(0, 10, 40)
    pd.DataFrame({"x": x, "y": 2 * x}).to_csv(csv, index=False)
    after, before, none = tmp_path / "after", tmp_path / "before", tmp_path / "none"
    train = ["train", "--csv", str(csv), "--target", "y", "--name", "line"]
    assert run_cli(capsys, *train, "--models-dir", str(after))[0] == 0
    assert run_cli(capsys, "--models-dir", str(before), *train)[0] == 0
    assert list_versions(after, "line") == list_versions(before, "line") == [1]

    code, out, _ = run_cli(capsys, "models", "--models-dir", str(after))
    assert (code, out.splitlines()[1]) == (0, "line   1         production=1")
    # Both given: the one after the command is the nearer, and wins.
    code, out, _ = run_cli(capsys, "--models-dir", str(none), "models", "--models-dir", str(before))
    assert (code, out.splitlines()[1]) == (0, "line   1         production=1")
    code, out, _ = run_cli(capsys, "--models-dir", str(before), "models", "--models-dir", str(none))
    assert out == f"no models in {none}\n"


# --- settings: one line naming the variable and the rule, never the value ------------------


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("STEWARD_PORT", "eighty", "input should be a valid integer"),
        ("STEWARD_MAX_INSTANCES", "0", "input should be greater than or equal to 1"),
        ("STEWARD_LOG_WAIT_SECONDS", "inf", "input should be a finite number"),
        # Milliseconds kept after the rename to seconds: 2 ms would be 2 s.
        ("STEWARD_BATCH_MAX_WAIT_SECONDS", "2", "input should be less than or equal to 1"),
        ("STEWARD_LOG_LEVEL", "chatty", "input should be 'critical', 'error', 'warning'"),
        ("STEWARD_TRAINING_COPY_MAX_BYTES", "-1", "input should be greater than or equal to 0"),
        ("STEWARD_TRAINING_COPY_MAX_BYTES", "50MB", "input should be a valid integer"),
        ("STEWARD_RETRAIN_HOLDOUT_SECONDS", "-1", "input should be greater than or equal to 0"),
        ("STEWARD_RETRAIN_HOLDOUT_SECONDS", "nan", "input should be a finite number"),
        (
            "STEWARD_FEEDBACK_PENDING_WAIT_SECONDS",
            "-1",
            "input should be greater than or equal to 0",
        ),
        ("STEWARD_FEEDBACK_PENDING_WAIT_SECONDS", "61", "input should be less than or equal to 60"),
        ("STEWARD_FEEDBACK_PENDING_WAIT_SECONDS", "soon", "input should be a valid number"),
        ("STEWARD_FEEDBACK_PENDING_WAIT_SECONDS", "inf", "input should be a finite number"),
        ("STEWARD_DATABASE_POOL_SIZE", "0", "input should be greater than or equal to 1"),
        ("STEWARD_DATABASE_POOL_SIZE", "-1", "input should be greater than or equal to 1"),
        ("STEWARD_DATABASE_POOL_SIZE", "abc", "input should be a valid integer"),
        ("STEWARD_DATABASE_POOL_SIZE", "1001", "input should be less than or equal to 1000"),
        ("STEWARD_DATABASE_POOL_SIZE", "2.5", "input should be a valid integer"),
        ("STEWARD_DATABASE_POOL_MAX_OVERFLOW", "-1", "input should be greater than or equal to 0"),
        ("STEWARD_DATABASE_POOL_MAX_OVERFLOW", "1e9", "input should be a valid integer"),
        ("STEWARD_DATABASE_POOL_TIMEOUT_SECONDS", "-5", "input should be greater than 0"),
        ("STEWARD_DATABASE_POOL_TIMEOUT_SECONDS", "nan", "input should be a finite number"),
        ("STEWARD_DATABASE_POOL_TIMEOUT_SECONDS", "3601", "input should be less than or equal"),
    ],
)
def test_bad_setting_is_one_line_naming_the_variable(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    rule: str,
) -> None:
    monkeypatch.setenv(variable, value)
    code, out, err = run_cli(capsys, "--models-dir", str(tmp_path), "models")
    assert (code, out) == (1, "")
    assert_one_line_error(err, f"steward: error: invalid settings: {variable}: {rule}")
    assert value not in err.removeprefix(f"steward: error: invalid settings: {variable}")
    assert "pydantic" not in err


@pytest.mark.parametrize(
    ("variable", "successor"),
    [
        ("STEWARD_BATCH_MAX_WAIT_MS", "STEWARD_BATCH_MAX_WAIT_SECONDS"),
        ("steward_batch_inline_max_ms", "STEWARD_BATCH_INLINE_MAX_SECONDS"),  # any case is read
    ],
)
def test_a_variable_renamed_to_seconds_is_refused_naming_its_successor(
    monkeypatch: pytest.MonkeyPatch, variable: str, successor: str
) -> None:
    """An operator upgrading with the old variable set loses nothing silently."""
    monkeypatch.setenv(variable, "5")
    monkeypatch.setenv("STEWARD_PORT", "eighty")
    with pytest.raises(InvalidSettings) as refused:
        load_settings()
    assert str(refused.value) == (
        f"invalid settings: {variable.upper()}: renamed {successor}, in seconds (2 ms is 0.002); "
        "STEWARD_PORT: input should be a valid integer, unable to parse string as an integer"
    )
    monkeypatch.delenv(variable)
    monkeypatch.setenv(successor, "0.005")
    monkeypatch.setenv("STEWARD_PORT", "8001")
    assert getattr(load_settings(), successor.removeprefix("STEWARD_").lower()) == 0.005


# --- train: a target that is not classes is refused in one line ----------------------------


def test_train_classification_on_a_continuous_target_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    csv = tmp_path / "prices.csv"
    pd.DataFrame({"x": x, "price": 3 * x + rng.normal(size=200)}).to_csv(csv, index=False)
    models = tmp_path / "models"
    argv = ["--models-dir", str(models), "train", "--csv", str(csv), "--target", "price"]
    code, out, err = run_cli(capsys, *argv, "--name", "prices", "--task", "classification")
    assert (code, out) == (1, "")
    assert_one_line_error(
        err, "target 'price' holds continuous numbers (200 distinct values)", "--task regression"
    )
    assert list_versions(models, "prices") == []
    assert run_cli(capsys, *argv, "--name", "prices", "--task", "regression")[0] == 0


@pytest.mark.parametrize(
    ("labels", "task", "message"),
    [
        ([f"customer-{i}" for i in range(60)], None, "has 60 distinct values in 60 rows"),
        (list(range(150)) * 2, "classification", "has 150 distinct values in 300 rows"),
        (["yes"] * 30, None, "has a single value"),
    ],
)
def test_train_refuses_an_unreasonable_number_of_classes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    labels: list[object],
    task: str | None,
    message: str,
) -> None:
    csv = tmp_path / "data.csv"
    pd.DataFrame({"x": np.arange(len(labels)), "label": labels}).to_csv(csv, index=False)
    argv = ["train", "--csv", str(csv), "--target", "label", "--name", "m"]
    task_option = ["--task", task] if task else []
    code, out, err = run_cli(capsys, "--models-dir", str(tmp_path), *argv, *task_option)
    assert (code, out) == (1, "")
    assert_one_line_error(err, f"target 'label' {message}")


def test_train_many_small_classes_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """60 classes of 3 rows: too many for a stratified 25% test part, so the split is plain."""
    csv = tmp_path / "data.csv"
    labels = [f"c{i}" for i in range(60)] * 3
    pd.DataFrame({"x": np.arange(180), "label": labels}).to_csv(csv, index=False)
    argv = ["train", "--csv", str(csv), "--target", "label", "--name", "many"]
    code, out, err = run_cli(capsys, "--models-dir", str(tmp_path), *argv)
    assert (code, err) == (0, "")
    assert out.startswith("many: version 1 (production) accuracy=")


# --- register: what is not an estimator, and what the sample knows -------------------------


def _flag_model(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = np.linspace(0, 1, 40).reshape(20, 2)
    artifact = tmp_path / "flag.joblib"
    joblib.dump(LogisticRegression().fit(x, np.where(x[:, 0] > 0.5, "hi", "lo")), artifact)
    return artifact, x


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("csv", "not a joblib or pickle file of a scikit-learn estimator"),
        ("text", "not a joblib or pickle file of a scikit-learn estimator"),
        ("empty", "not a joblib or pickle file of a scikit-learn estimator"),
        ("truncated", "not a joblib or pickle file of a scikit-learn estimator"),
        ("dict", "not a scikit-learn classifier or regressor"),
        ("unfitted", "the estimator is not fitted"),
    ],
)
def test_register_refuses_what_is_not_a_fitted_estimator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"p": [0.1, 0.9], "q": [0.2, 0.8]}).to_csv(sample, index=False)
    artifact = tmp_path / "model.joblib"
    if content == "csv":
        artifact.write_bytes(sample.read_bytes())
    elif content == "text":
        artifact.write_text("hello, this is not a model\n")
    elif content == "empty":
        artifact.write_bytes(b"")
    elif content == "truncated":
        good, _ = _flag_model(tmp_path)
        artifact.write_bytes(good.read_bytes()[:200])
    elif content == "dict":
        artifact.write_bytes(pickle.dumps({"not": "a model"}))
    else:
        joblib.dump(LogisticRegression(), artifact)
    models = tmp_path / "models"
    argv = ["register", str(artifact), "--name", "m", "--sample", str(sample)]
    code, out, err = run_cli(capsys, "--models-dir", str(models), *argv)
    assert (code, out) == (1, "")
    assert err == f"steward: error: {artifact}: {message}\n"
    assert not models.exists()


def test_register_with_target_scores_a_classifier_on_its_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact, x = _flag_model(tmp_path)
    sample = tmp_path / "labelled.csv"
    truth = np.where(x[:, 0] > 0.5, "hi", "lo")
    truth[0] = "hi"  # one wrong answer of 20
    pd.DataFrame({"p": x[:, 0], "answer": truth, "q": x[:, 1]}).to_csv(sample, index=False)
    models = tmp_path / "models"
    argv = ["register", str(artifact), "--name", "flag", "--sample", str(sample)]
    code, out, err = run_cli(capsys, "--models-dir", str(models), *argv, "--target", "answer")
    assert (code, err) == (0, "")
    assert out.startswith("flag: version 1 (production) accuracy=0.95 f1_macro=")
    metadata = read_metadata(models, "flag", 1)
    assert [f.name for f in metadata.features] == ["p", "q"]
    assert (metadata.sample_rows, metadata.training_rows) == (20, 0)
    assert metadata.metrics["accuracy"] == 0.95
    assert (metadata.target_min, metadata.target_max) == (None, None)
    assert "scored on its column 'answer'" in metadata.description

    # Without --target, the extra column is refused as before, with a hint.
    code, _, err = run_cli(capsys, "--models-dir", str(models), *argv)
    assert code == 1
    assert_one_line_error(err, "3 columns, the model expects 2 features", "--target")
    # A target that is not there, or holds answers that are not the model's classes.
    code, _, err = run_cli(capsys, "--models-dir", str(models), *argv, "--target", "nope")
    assert code == 1
    assert_one_line_error(err, "no column 'nope'")
    pd.DataFrame({"p": x[:, 0], "answer": "maybe", "q": x[:, 1]}).to_csv(sample, index=False)
    code, _, err = run_cli(capsys, "--models-dir", str(models), *argv, "--target", "answer")
    assert code == 1
    assert_one_line_error(err, "'answer' holds 1 value(s) that are not classes of the model")
    assert list_versions(models, "flag") == [1]


def test_register_with_target_records_a_regressors_metrics_and_target_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.linspace(0, 10, 30).reshape(15, 2)
    artifact = tmp_path / "sum.joblib"
    joblib.dump(LinearRegression().fit(x, x.sum(axis=1)), artifact)
    sample = tmp_path / "labelled.csv"
    y = x.sum(axis=1)
    y[-1] = np.nan  # an unlabelled row: part of the schema, not of the scores
    pd.DataFrame({"total": y, "a": x[:, 0], "b": x[:, 1]}).to_csv(sample, index=False)
    models = tmp_path / "models"
    argv = ["register", str(artifact), "--name", "sum", "--sample", str(sample)]
    code, out, err = run_cli(capsys, "--models-dir", str(models), *argv, "--target", "total")
    assert (code, err) == (0, "")
    assert out.startswith("sum: version 1 (production) mae=")
    metadata = read_metadata(models, "sum", 1)
    assert (metadata.sample_rows, metadata.training_rows) == (15, 0)
    assert set(metadata.metrics) == {"mae", "rmse", "r2"}
    assert metadata.metrics["r2"] == 1.0
    assert metadata.target_min == pytest.approx(y[0])
    assert metadata.target_max == pytest.approx(y[-2])


# --- serve: a pre-flight, so the real command refuses in one line before uvicorn starts ----

# case: (variables, what the one line says); {tmp} is a scratch folder.
SERVE_REFUSALS = {
    "bad-port": ({"STEWARD_PORT": "eighty"}, "STEWARD_PORT: input should be a valid integer"),
    "bad-limit": ({"STEWARD_MAX_INSTANCES": "0"}, "STEWARD_MAX_INSTANCES: input should be greater"),
    "renamed-to-seconds": (
        {"STEWARD_BATCH_MAX_WAIT_MS": "2"},
        "STEWARD_BATCH_MAX_WAIT_MS: renamed STEWARD_BATCH_MAX_WAIT_SECONDS, in seconds",
    ),
    "no-models-dir": (
        {"STEWARD_MODELS_DIR": "{tmp}/no-such-dir"},
        "STEWARD_MODELS_DIR (or --models-dir): no directory at",
    ),
    "database-down": (
        {"STEWARD_DATABASE_URL": "postgresql+psycopg://nobody:hunter2@127.0.0.1:1/x"},
        "Connection refused",
    ),
    "not-a-url": (
        {"STEWARD_DATABASE_URL": "hunter2@db:5432"},
        "the store URL is not a SQLAlchemy URL",
    ),
    "no-driver": (
        {"STEWARD_DATABASE_URL": "oracle+nodriver://scott:hunter2@db/x"},
        "no usable database driver for 'oracle+nodriver'",
    ),
    "data-dir-in-a-file": (
        {"STEWARD_DATA_DIR": "{tmp}/file.txt/data"},
        "for the SQLite store: Not a directory (STEWARD_DATA_DIR)",
    ),
}


@pytest.fixture(scope="module")
def serve_refusals(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path
) -> dict[str, tuple[int, str, str]]:
    """Each case's `steward serve`, run at once (each process spends seconds on imports)."""
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "file.txt").write_text("a file where a folder should be\n")
    processes = {}
    for case, (variables, _) in SERVE_REFUSALS.items():
        env = _env(
            {"STEWARD_MODELS_DIR": str(demo_models), "STEWARD_DATA_DIR": str(tmp / case)}
            | {k: v.format(tmp=tmp) for k, v in variables.items()}
        )
        argv = [str(STEWARD), "serve", "--port", str(free_port())]
        processes[case] = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    results = {}
    for case, process in processes.items():
        try:
            out, err = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:  # it started serving: stop it, and fail below
            process.kill()
            out, err = process.communicate()
        results[case] = (process.returncode, out, err)
    return results


@pytest.mark.parametrize("case", SERVE_REFUSALS)
def test_serve_refuses_to_start_in_one_line(
    serve_refusals: dict[str, tuple[int, str, str]], case: str
) -> None:
    variables, message = SERVE_REFUSALS[case]
    code, out, err = serve_refusals[case]
    assert (code, out) == (1, ""), err
    assert_one_line_error(err, message)
    assert "hunter2" not in err
    if "STEWARD_DATABASE_URL" in variables:
        assert err.rstrip().endswith("(STEWARD_DATABASE_URL)")


def test_serve_takes_its_port_and_log_level_from_the_settings(
    demo_models: Path, tmp_path: Path
) -> None:
    """No option: STEWARD_PORT is where it listens (the container relies on it, and on
    STEWARD_HOST: tests/test_containers.py), STEWARD_LOG_LEVEL=warning leaves out info lines."""
    port = free_port()
    env = _env(
        {
            "STEWARD_MODELS_DIR": str(demo_models),
            "STEWARD_DATA_DIR": str(tmp_path / "data"),
            "STEWARD_PORT": str(port),
            "STEWARD_LOG_LEVEL": "warning",
        }
    )
    log = tmp_path / "serve.log"
    with serving([STEWARD, "serve"], port=port, env=env, log=log, ready="/readyz") as served:
        assert served.stop() == 0
    assert "INFO" not in log.read_text()


def test_create_app_refuses_a_missing_models_dir(tmp_path: Path) -> None:
    """The same check for `uvicorn --factory app.main:create_app`, which skips the CLI."""
    settings = Settings(models_dir=tmp_path / "nope", data_dir=tmp_path / "data")
    with pytest.raises(
        InvalidSettings, match=r"^STEWARD_MODELS_DIR \(or --models-dir\): no directory at .*nope"
    ):
        create_app(settings)


def test_serve_refuses_a_port_in_use_in_one_line(
    demo_models: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "data"))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        argv = ["--models-dir", str(demo_models), "serve", "--port", str(port)]
        code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (1, "")
    assert_one_line_error(err, f"cannot listen on 127.0.0.1:{port}")


def test_ctrl_c_before_a_command_takes_the_signal_is_one_line_and_130(tmp_path: Path) -> None:
    """SIGINT while `steward train demo` fits (no handler of its own): no traceback."""
    argv = [str(STEWARD), "--models-dir", str(tmp_path / "models"), "train", "demo"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_until(lambda: (tmp_path / "models").exists(), seconds=60, interval=0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.splitlines()[-1] == "steward: error: interrupted", err
    assert "Traceback" not in err
