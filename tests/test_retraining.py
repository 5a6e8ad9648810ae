"""`steward retrain` and the gate: the demo iris v1 serving through the real app, feedback on
a shifted input distribution logged by it, retrainings from v1's recipe judged against v1 on
the same rows, their numbers recomputed here from the saved artifacts."""

import json
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import (
    assert_one_line_error,
    empty_store,
    plan_churn_csv,
    predict,
    prediction_ids,
    run_cli,
    write_labelled,
)
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split

from app.aliases import read_aliases
from app.artifacts import DataSource, ModelMetadata, load_estimator, read_metadata, save_version
from app.errors import NoRecipe
from app.gate import GateSet, at_least, decide, judge, skipped
from app.main import create_app
from app.registration import register_estimator
from app.retraining import retrain
from app.retraining_data import label_name
from app.settings import Settings
from app.store import open_store
from app.training import DEMOS, evaluate, frame_rows, train_csv
from app.training_data import demo_training_frame, rows_digest
from app.training_rows import TEST_SIZE

SHIFT = 3.0  # cm added to every sepal width: v1 takes most such flowers for setosa
ROTATED = {"setosa": "versicolor", "versicolor": "virginica", "virginica": "setosa"}


def shifted_iris(models_dir: Path) -> tuple[pd.DataFrame, pd.Series]:
    """The iris rows (distinct ones only) with sepals 3 cm wider, and their true species."""
    frame, labels = demo_training_frame(read_metadata(models_dir, "iris", 1), DEMOS)
    frame = frame.assign(sepal_width_cm=frame["sepal_width_cm"] + SHIFT)
    distinct = ~frame.duplicated()
    return frame[distinct].reset_index(drop=True), labels[distinct].reset_index(drop=True)


def serve_feedback(
    settings: Settings, frame: pd.DataFrame, train_labels: pd.Series, truth: pd.Series
) -> tuple[pd.DataFrame, pd.Series]:
    """Through the real app: the even rows predicted and labelled with ``train_labels``, then,
    past the holdout window, the odd rows labelled with ``truth``: the recent traffic."""
    even, odd = frame.iloc[::2], frame.iloc[1::2]
    with TestClient(create_app(settings)) as client:
        for rows, labels in ((even, train_labels.iloc[::2]), (odd, truth.iloc[1::2])):
            if rows is odd:  # the first batch is now older than the window
                time.sleep(1.5 * settings.retrain_holdout_seconds)
            instances = [{str(k): v for k, v in row.items()} for row in rows.to_dict("records")]
            ids = prediction_ids(predict(client, "iris", *instances))
            items = [
                {"prediction_id": i, "ground_truth": y} for i, y in zip(ids, labels, strict=True)
            ]
            answer = client.post("/feedback", json={"items": items})
            assert answer.status_code == 200, answer.text
    return odd.reset_index(drop=True), truth.iloc[1::2].reset_index(drop=True)


@pytest.fixture
def retrain_settings(tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STEWARD_RETRAIN_HOLDOUT_SECONDS", "1")
    settings = Settings(
        models_dir=models_dir, data_dir=tmp_path / "data", retrain_holdout_seconds=1
    )
    open_store(settings.store_url).close()  # as a server makes it at start-up: no feedback yet
    return settings


def report(out: str) -> list[str]:
    """`steward retrain`'s report: its output after the progress lines (app/progress.py's Lines,
    since the output is not a terminal), from the line naming the new version."""
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if re.match(r"\S+: version \d+ from ", line))
    return lines[first:]


def score(
    root: Path,
    metadata: ModelMetadata,
    frame: pd.DataFrame,
    labels: pd.Series,
    metric: str = "accuracy",
) -> float:
    """A saved version's score on these rows, from its artifact."""
    estimator = load_estimator(root, metadata)
    predicted = estimator.predict(metadata.contract().matrix(frame_rows(frame)))
    return evaluate(metadata.task, labels.to_numpy(), predicted)[metric]


def v1_held_out(root: Path) -> tuple[pd.DataFrame, pd.Series]:
    """The rows v1's metrics were measured on: its split of the demo rows, redone here."""
    v1 = read_metadata(root, "iris", 1)
    frame, labels = demo_training_frame(v1, DEMOS)
    _, test_x, _, test_y = train_test_split(
        frame, labels, test_size=TEST_SIZE, random_state=0, stratify=labels
    )
    assert evaluate("classification", test_y.to_numpy(), load_estimator(root, v1).predict(
        v1.contract().matrix(frame_rows(test_x)))) == v1.metrics  # fmt: skip
    return test_x, test_y


def expected_sets(
    root: Path, new: ModelMetadata, recent: pd.DataFrame, recent_labels: pd.Series
) -> list[GateSet]:
    v1 = read_metadata(root, "iris", 1)
    held_x, held_y = v1_held_out(root)
    return [
        judge("held_out", len(held_y), score(root, v1, held_x, held_y),
              score(root, new, held_x, held_y), "accuracy", 0.01),
        judge("recent", len(recent_labels), score(root, v1, recent, recent_labels),
              score(root, new, recent, recent_labels), "accuracy", 0.01),
    ]  # fmt: skip


def test_a_retraining_on_feedback_from_a_shifted_distribution_passes_and_becomes_candidate(
    retrain_settings: Settings, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame, truth = shifted_iris(models_dir)
    recent, recent_labels = serve_feedback(retrain_settings, frame, truth, truth)

    code, out, err = run_cli(
        capsys, "--models-dir", str(models_dir), "retrain", "iris", "--candidate"
    )
    assert (code, err) == (0, "")
    new = read_metadata(models_dir, "iris", 2)
    assert read_aliases(models_dir, "iris") == {"production": 1, "candidate": 2}
    sets = expected_sets(models_dir, new, recent, recent_labels)
    held, window = sets
    assert new.gate == decide(1, "accuracy", 0.01, sets)
    assert new.gate.passed
    # v1 fails on the shifted traffic; the version trained on it does better there
    assert window.production is not None
    assert window.production < 0.5
    assert window.new is not None
    assert window.new > window.production + 0.3
    assert (held.rows, window.rows) == (38, len(frame) // 2)

    trained = (len(frame) + 1) // 2
    assert new.training_data is not None
    v1_data = read_metadata(models_dir, "iris", 1).training_data
    assert v1_data is not None
    assert new.training_data.sources == [
        v1_data.sources[0].model_copy(update={"rows": 150 - 38}),
        DataSource(kind="feedback", rows=trained, sha256=new.training_data.sources[1].sha256),
    ]
    assert new.training_data.rows == 150 - 38 + trained
    assert (
        new.training_data.training_rows + new.training_data.held_out_rows == new.training_data.rows
    )

    lines = report(out)
    assert lines[0] == (
        f"iris: version 2 from v1's recipe on demo iris 112 rows + feedback {trained} rows"
    )
    assert lines[1] == (
        f"feedback: {len(frame)} labelled, {trained} trained on, {len(frame) // 2} held out "
        "(recent), 0 same as a held-out row, 0 duplicates, 0 conflicts, 0 unfit"
    )
    assert lines[3] == "gate: accuracy, margin 0.01"
    assert lines[4].split() == [
        "SET",
        "ROWS",
        "PRODUCTION",
        "v1",
        "NEW",
        "v2",
        "DIFFERENCE",
        "VERDICT",
    ]
    for line, judged in zip(lines[5:7], sets, strict=True):
        assert line.split() == [
            judged.name, str(judged.rows), f"{judged.production:.4f}", f"{judged.new:.4f}",
            f"{judged.difference:+.4f}", "pass",
        ]  # fmt: skip
    assert lines[8].startswith("passed: accuracy not worse than production v1 by more than")
    assert lines[8].endswith("candidate -> version 2 (was unset; running servers swap to it "
                             "within STEWARD_RELOAD_INTERVAL_SECONDS)")  # fmt: skip


@pytest.mark.parametrize("degraded", ["rotated", "shuffled"])
def test_a_degraded_retraining_is_refused_kept_and_never_aliased(
    retrain_settings: Settings,
    models_dir: Path,
    capsys: pytest.CaptureFixture[str],
    degraded: str,
) -> None:
    """The feedback trained on labelled wrong: every species rotated, or the labels shuffled."""
    frame, truth = shifted_iris(models_dir)
    if degraded == "rotated":
        wrong = truth.map(ROTATED)
    else:
        wrong = pd.Series(np.random.default_rng(0).permutation(truth.to_numpy()))
    recent, recent_labels = serve_feedback(retrain_settings, frame, wrong, truth)
    where = ["--models-dir", str(models_dir)]

    code, out, err = run_cli(capsys, *where, "retrain", "iris", "--promote")
    assert code == 1
    assert_one_line_error(err, "iris v2 refused by the gate: accuracy worse than production v1")
    assert err.rstrip().endswith("kept as a version, not aliased")
    new = read_metadata(models_dir, "iris", 2)
    sets = expected_sets(models_dir, new, recent, recent_labels)
    assert new.gate == decide(1, "accuracy", 0.01, sets)
    assert not new.gate.passed
    # it learnt wrong species for many flowers: far worse on v1's held-out rows, labelled by
    # a person, and that refuses it; the recent traffic alone would have let it through (v1
    # fails on the shifted rows)
    assert [s.verdict for s in sets] == ["worse", "pass"]
    assert sets[0].difference is not None
    assert sets[0].difference < -0.1
    assert read_aliases(models_dir, "iris") == {"production": 1}
    assert (
        "refused: accuracy worse than production v1 by more than the margin (0.01) on held_out"
        in out
    )

    code, out, err = run_cli(capsys, *where, "retrain", "iris", "--candidate")
    assert code == 1
    assert_one_line_error(err, "iris v3 refused by the gate")
    code, out, err = run_cli(capsys, *where, "retrain", "iris")  # kept only: not a failure
    assert (code, err) == (0, "")
    assert "refused: " in out
    assert "kept as version 4, not aliased" in out
    assert read_aliases(models_dir, "iris") == {"production": 1}


def test_without_recent_traffic_the_recent_set_is_skipped_and_said_so(
    retrain_settings: Settings, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "--models-dir", str(models_dir), "retrain", "iris")
    assert (code, err) == (0, "")
    new = read_metadata(models_dir, "iris", 2)
    v1 = read_metadata(models_dir, "iris", 1)
    held_x, held_y = v1_held_out(models_dir)
    held = judge(
        "held_out",
        38,
        score(models_dir, v1, held_x, held_y),
        score(models_dir, new, held_x, held_y),
        "accuracy",
        0.01,
    )
    window = skipped(
        "recent", "no labelled traffic in the window (STEWARD_RETRAIN_HOLDOUT_SECONDS)"
    )
    assert new.gate == decide(1, "accuracy", 0.01, [held, window])
    assert new.training_data is not None
    assert new.training_data.rows == 112  # the demo less v1's held-out rows, no feedback
    assert report(out)[6].split() == [
        "recent", "0", "-", "-", "-", "skipped:", "no", "labelled", "traffic", "in", "the",
        "window", "(STEWARD_RETRAIN_HOLDOUT_SECONDS)",
    ]  # fmt: skip
    assert read_aliases(models_dir, "iris") == {"production": 1}


def test_the_gate_metric_may_be_macro_f1_and_a_csv_version_passes_on_its_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    csv = plan_churn_csv(tmp_path / "churn.csv")
    v1 = train_csv(models, csv, "churned", "churn")
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("STEWARD_GATE_METRIC", "f1_macro")
    empty_store(tmp_path / "data")
    code, out, err = run_cli(capsys, "--models-dir", str(models), "retrain", "churn")
    assert (code, err) == (0, "")
    assert "gate: f1_macro, margin 0.01" in out
    v2 = read_metadata(models, "churn", 2)
    assert v2.gate is not None
    held = v2.gate.sets[0]
    base = pd.read_csv(csv)
    labels = base.pop("churned")
    _, test_x, _, test_y = train_test_split(
        base, labels, test_size=TEST_SIZE, random_state=0, stratify=labels
    )
    assert held.rows == len(test_y) == 30
    assert held.production == score(models, v1, test_x, test_y, "f1_macro")
    assert held.new == score(models, v2, test_x, test_y, "f1_macro")
    # v2 keeps v1's copy of the base: the next retraining starts from v2 alone
    assert v2.training_data is not None
    assert v1.training_data is not None
    assert v2.training_data.copy_sha256 == v1.training_data.copy_sha256
    assert read_aliases(models, "churn") == {"production": 1}
    assert run_cli(capsys, "--models-dir", str(models), "promote", "churn", "2")[0] == 0
    code, out, err = run_cli(capsys, "--models-dir", str(models), "retrain", "churn")
    assert (code, err) == (0, "")
    first = report(out)[0]
    assert first.startswith("churn: version 3 from v2's recipe on csv churn.csv 90 rows + ")


def test_a_registered_regressor_retrains_on_feedback_alone_judged_by_mae_on_recent_traffic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model registered from elsewhere (it reads a named DataFrame), no base data: the
    held-out set is skipped, the recent traffic decides, on MAE with a relative margin."""
    x = pd.DataFrame({"a": np.arange(20, dtype=float), "b": np.arange(20, dtype=float) % 3})
    artifact, sample = tmp_path / "model.joblib", tmp_path / "inputs.csv"
    joblib.dump(LinearRegression().fit(x, 2 * x["a"]), artifact)
    x.to_csv(sample, index=False)
    models = tmp_path / "models"
    assert register_estimator(models, artifact, "line", sample).input_format == "dataframe"
    settings = Settings(
        models_dir=models, data_dir=tmp_path / "data", gate_margin=0.05, gate_min_rows=4
    )
    store = open_store(settings.store_url)
    try:
        # the truth changed: y = 3a + b. 12 rows two days ago, 4 in the last day (held out)
        old = [
            (timedelta(days=2, minutes=i), {"a": float(i), "b": float(i % 3)}) for i in range(12)
        ]
        recent = [(timedelta(hours=i), {"a": 30.0 + i, "b": 1.0}) for i in range(4)]
        write_labelled(store, "line", [(t, r, 3 * r["a"] + r["b"]) for t, r in [*old, *recent]])
        result = retrain(settings, store, "line", then="promote")
        no_window = Settings(
            models_dir=models, data_dir=tmp_path / "data", retrain_holdout_seconds=0
        )
        unjudged = retrain(no_window, store, "line", then="candidate")
    finally:
        store.close()

    v1, new = read_metadata(models, "line", 1), result.version
    assert new.input_format == "dataframe"
    frame = pd.DataFrame([r for _, r in reversed(recent)])  # oldest first
    labels = 3 * frame["a"] + frame["b"]
    production, retrained = (score(models, m, frame, labels, "mae") for m in (v1, new))
    window = judge("recent", 4, production, retrained, "mae", 0.05)
    assert window.production == 32.5  # 2a where the truth is 3a + b: off by a + b
    assert window.new is not None
    assert window.new < 0.01
    assert result.decision == decide(
        1, "mae", 0.05, [skipped("held_out", "no base data: feedback only"), window]
    )
    assert result.decision.relative
    assert result.aliased is not None
    assert read_aliases(models, "line") == {"production": new.version}
    assert new.training_data is not None
    assert new.training_data.sources == [
        DataSource(kind="feedback", rows=12, sha256=new.training_data.sources[0].sha256)
    ]

    # no window and no base: nothing to judge on, so refused, kept, never aliased
    assert not unjudged.decision.passed
    assert [s.verdict for s in unjudged.decision.sets] == ["skipped", "skipped"]
    assert unjudged.aliased is None
    assert unjudged.version.version == 3
    assert read_aliases(models, "line") == {"production": 2}


# --- the gate's pure parts --------------------------------------------------------------------


def test_the_gate_judges_each_set_within_its_margin() -> None:
    few = judge("recent", 19, 0.5, 0.1, "accuracy", 0.01)
    assert at_least(few, 20) == skipped(
        "recent", "19 rows, fewer than STEWARD_GATE_MIN_ROWS (20): too few to judge on"
    )
    assert at_least(few, 19) == few
    assert judge("recent", 10, 0.9, 0.89, "accuracy", 0.01).verdict == "pass"
    assert judge("recent", 10, 0.9, 0.889, "accuracy", 0.01).verdict == "worse"
    assert judge("held_out", 10, 0.5, 0.9, "f1_macro", 0.0).difference == 0.4
    # MAE: lower is better, the margin a share of production's error
    assert judge("recent", 10, 20.0, 20.2, "mae", 0.01).verdict == "pass"
    assert judge("recent", 10, 20.0, 20.21, "mae", 0.01).verdict == "worse"
    assert judge("recent", 10, 20.0, 10.0, "mae", 0.0).verdict == "pass"

    passing = judge("held_out", 38, 0.9, 0.9, "accuracy", 0.01)
    failing = judge("recent", 5, 0.8, 0.6, "accuracy", 0.01)
    window = skipped("recent", "no labelled traffic")
    assert decide(3, "accuracy", 0.01, [passing, window]).passed
    refused = decide(3, "accuracy", 0.01, [passing, failing])
    assert not refused.passed
    assert refused.reason == (
        "accuracy worse than production v3 by more than the margin (0.01) on recent"
    )
    nothing = decide(3, "mae", 0.05, [skipped("held_out", "none"), window])
    assert not nothing.passed
    assert nothing.relative
    assert nothing.reason.startswith("no rows to compare it with production on")


# --- what cannot be retrained ---------------------------------------------------------------


def test_bad_input_is_one_line_and_leaves_the_registry_alone(
    retrain_settings: Settings, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--models-dir", str(models_dir)]
    code, _, err = run_cli(capsys, *where, "retrain", "nope")
    assert code == 1
    assert_one_line_error(err, "no model 'nope'")
    for bad in ("yesterday", "2026-13-01", "<b>" * 1000):
        code, _, err = run_cli(capsys, *where, "retrain", "iris", "--since", bad)
        assert code == 2
        assert_one_line_error(err, "a date is ISO 8601")
        assert bad not in err
    for bad, why in (
        ("0001-01-01T00:00:00+14:00", "the date is out of range once in UTC"),
        ("2999-01-01", "the date is in the future: no feedback was made since then"),
    ):
        code, _, err = run_cli(capsys, *where, "retrain", "iris", "--since", bad)
        assert code == 2
        assert_one_line_error(err, why)
        assert bad not in err
    code, _, err = run_cli(capsys, *where, "retrain", "iris", "--candidate", "--promote")
    assert code == 2
    code, _, err = run_cli(capsys, *where, "retrain", "iris", "--target", "species")
    assert code == 2
    assert_one_line_error(err, "--target names --csv's label column")

    # too few rows: a model registered from a sample keeps no data, and no feedback came
    shutil.rmtree(models_dir / "iris")
    for name in ("diabetes", "breast-cancer"):
        shutil.rmtree(models_dir / name)
    x = np.arange(40, dtype=float).reshape(20, 2)
    sample = models_dir.parent / "inputs.csv"
    pd.DataFrame(x, columns=["a", "b"]).to_csv(sample, index=False)
    artifact = models_dir.parent / "model.joblib"
    joblib.dump(LinearRegression().fit(x, x[:, 0]), artifact)
    code, _, err = run_cli(
        capsys, *where, "register", str(artifact), "--name", "line", "--sample", str(sample)
    )
    assert code == 0
    code, _, err = run_cli(capsys, *where, "retrain", "line")
    assert code == 1
    assert_one_line_error(err, "line v1: need at least 10 labelled rows, got 0")
    assert [p.name for p in (models_dir / "line").iterdir() if p.is_dir()] == ["1"]


def test_a_store_that_is_missing_or_down_is_one_line_naming_its_setting_and_writes_nothing(
    tmp_path: Path,
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    where = ["--models-dir", str(models_dir)]
    # No store where STEWARD_DATA_DIR points (the wrong folder, or no server ran): refused, and
    # no empty store made there, which a retraining would have learnt nothing from.
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("STEWARD_DATA_DIR", str(elsewhere))
    code, out, err = run_cli(capsys, *where, "retrain", "iris")
    assert (code, out) == (1, "")
    assert_one_line_error(
        err, f"no prediction store at {elsewhere / 'steward.db'} (STEWARD_DATA_DIR): a retraining"
    )
    assert not elsewhere.exists()
    # A SQLite path that cannot be opened: a folder where the file should be.
    (elsewhere / "steward.db").mkdir(parents=True)
    code, out, err = run_cli(capsys, *where, "retrain", "iris")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "prediction store failed to ", "(STEWARD_DATA_DIR)")
    # A PostgreSQL where nothing listens.
    monkeypatch.setenv("STEWARD_DATABASE_URL", "postgresql://127.0.0.1:1/test")
    code, out, err = run_cli(capsys, *where, "retrain", "iris", "--promote")
    assert (code, out) == (1, "")
    assert_one_line_error(
        err,
        "prediction store failed to create its schema: connection failed",
        "(STEWARD_DATABASE_URL)",
    )
    assert sorted(p.name for p in (models_dir / "iris").iterdir() if p.is_dir()) == ["1"]
    assert read_aliases(models_dir, "iris") == {"production": 1}


def test_a_version_whose_estimator_cannot_be_cloned_has_no_recipe(
    retrain_settings: Settings, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = read_metadata(models_dir, "iris", 1)
    odd = save_version(models_dir, v1, {"not": "an estimator"}, promote=True)
    store = open_store(retrain_settings.store_url)
    try:
        with pytest.raises(NoRecipe, match=f"iris v{odd.version} has no recipe to retrain"):
            retrain(retrain_settings, store, "iris")
    finally:
        store.close()
    code, _, err = run_cli(capsys, "--models-dir", str(models_dir), "retrain", "iris")
    assert code == 1
    assert_one_line_error(err, "has no recipe to retrain: its estimator cannot be cloned")
    assert sorted(p.name for p in (models_dir / "iris").iterdir() if p.is_dir()) == ["1", "2"]


def test_feedback_with_held_out_inputs_is_not_trained_on_and_retrained_versions_keep_v1s_split(
    retrain_settings: Settings, models_dir: Path
) -> None:
    v1 = read_metadata(models_dir, "iris", 1)
    frame, truth = demo_training_frame(v1, DEMOS)
    distinct = ~frame.duplicated()
    frame, truth = frame[distinct].reset_index(drop=True), truth[distinct].reset_index(drop=True)
    serve_feedback(retrain_settings, frame, truth, truth)  # the demo's own rows, as clients send
    held_x, held_y = v1_held_out(models_dir)
    held = {tuple(row) for row in held_x.itertuples(index=False)}
    trained = frame.iloc[::2]
    same = sum(tuple(row) in held for row in trained.itertuples(index=False))
    assert same > 0

    store = open_store(retrain_settings.store_url)
    try:
        first = retrain(retrain_settings, store, "iris", then="promote")
        v2 = first.version
        assert first.decision.passed
        assert (first.overlap, first.trained_on) == (same, len(trained) - same)
        assert v2.training_data is not None
        assert v2.training_data.sources[1].rows == len(trained) - same
        # its digest is of the feedback rows it learnt, as read: one request's rows in the
        # order of their inputs (app/retraining_data.py)
        learnt = [tuple(row) not in held for row in trained.itertuples(index=False)]
        fed = trained.assign(species=truth.iloc[::2])[learnt]
        fed = fed.iloc[sorted(range(len(fed)), key=lambda i: json.dumps(fed.iloc[i, :4].tolist()))]
        fed_labels = fed.pop("species").reset_index(drop=True).rename(label_name(v1))
        digest = rows_digest(fed.reset_index(drop=True), fed_labels)
        assert v2.training_data.sources[1].sha256 == digest
        assert v2.training_data.base_split == v1.training_data.split  # type: ignore[union-attr]
        assert v2.training_data.feedback_until == first.data.recent_after
        assert v2.training_data.feedback_since is None

        # v2's own split was taken over other rows; its retraining is judged on v1's held-out
        # rows still, which neither v2 nor v3 was trained on
        second = retrain(retrain_settings, store, "iris")
    finally:
        store.close()
    v3 = second.version
    assert v3.training_data is not None
    assert v3.training_data.base_split == v1.training_data.split  # type: ignore[union-attr]
    assert second.overlap == same
    (judged,) = [s for s in second.decision.sets if s.name == "held_out"]
    assert judged.rows == len(held_y)
    assert judged.production == score(models_dir, v2, held_x, held_y)
    assert judged.new == score(models_dir, v3, held_x, held_y)
