"""`steward rollback`, `versions` and `status`: the registry's alias history and a real server."""

import os
import shutil
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import (
    IRIS_SETOSA,
    METADATA_BEFORE_TRAINING_DATA,
    assert_one_line_error,
    predict,
    prediction_ids,
    run_cli,
)
from server import STEWARD, free_port, serving
from sklearn.linear_model import LogisticRegression

from app.aliases import ALIASES, process_actor, read_alias_file, set_alias
from app.artifacts import METADATA, DataSource, TrainingData, read_metadata
from app.cli import TRAFFIC_NOTE
from app.cli.versions import data_cell
from app.main import create_app
from app.settings import Settings
from app.status import render_model, render_models
from app.training import train_demo


def test_versions_shows_metrics_aliases_and_history(
    models_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "never-served"))
    where = ["--models-dir", str(models_dir)]
    shutil.copytree(models_dir / "iris" / "1", models_dir / "iris" / "2")
    assert run_cli(capsys, *where, "promote", "iris", "2", "--alias", "candidate")[0] == 0
    code, out, err = run_cli(capsys, *where, "versions", "iris")
    assert (code, err) == (0, "")
    table, traffic, history = out.split("\n\n")
    assert traffic == "traffic: none (production answers every request)"
    *lines, notice = table.splitlines()
    assert notice == "live quality: no prediction store yet (nothing served)"
    assert not (tmp_path / "never-served").exists()  # a read command creates no store
    assert lines[0].split() == [
        "VERSION", "CREATED", "TASK", "ALIASES", "DATA", "OFFLINE", "METRICS", "LIVE",
        "(LABELLED)",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["1", "2"]
    assert " production " in lines[1]
    assert " candidate " in lines[2]
    for line in lines[1:]:
        assert " classification " in line
        assert " demo iris 150 rows " in line
        assert "accuracy=" in line
    rows = history.splitlines()
    assert rows[0].split() == ["AT", "ALIAS", "FROM", "TO", "BY", "ACTION"]
    assert [row.split()[2:] for row in rows[1:]] == [
        ["production", "-", "1", process_actor(), "promote"],  # set when v1 was trained
        ["candidate", "-", "2", process_actor(), "promote"],
    ]


def test_versions_shows_each_versions_live_quality_from_the_store(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the server logged and clients labelled, per version, next to the offline metrics:
    v1 served two rows (one labelled, correctly), v2 (the candidate) one row, labelled wrong."""
    train_demo(settings.models_dir)  # version 2 of each demo model
    set_alias(settings.models_dir, "iris", "candidate", 2)
    with TestClient(create_app(settings)) as client:
        first, _ = prediction_ids(predict(client, "iris", IRIS_SETOSA, IRIS_SETOSA))
        candidate = client.post(
            "/predict/iris?version=candidate", json={"instances": [IRIS_SETOSA]}
        )
        (second,) = prediction_ids(candidate)
        for prediction_id, truth in ((first, "setosa"), (second, "virginica")):
            answer = client.post(
                "/feedback", json={"prediction_id": prediction_id, "ground_truth": truth}
            )
            assert answer.status_code == 200, answer.text
    monkeypatch.setenv("STEWARD_DATA_DIR", str(settings.data_dir))
    code, out, _ = run_cli(capsys, "--models-dir", str(settings.models_dir), "versions", "iris")
    assert code == 0
    table = out.split("\n\n")[0].splitlines()
    assert table[1].split()[0] == "1"
    assert table[1].endswith("accuracy=1 (1 of 2)")
    assert table[2].split()[0] == "2"
    assert table[2].endswith("accuracy=0 (1 of 1)")


def test_versions_shows_where_each_versions_data_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV version with its copy, one trained with copies off (STEWARD_TRAINING_COPY_MAX_BYTES
    read by `steward train`), a registered one, and one whose metadata predates the record."""
    monkeypatch.setenv("STEWARD_DATA_DIR", str(tmp_path / "never-served"))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(40, 2))
    csv = tmp_path / "flags.csv"
    pd.DataFrame({"p": x[:, 0], "q": x[:, 1], "flag": x[:, 0] > 0.5}).to_csv(csv, index=False)
    where = ["--models-dir", str(tmp_path / "models")]
    train = [*where, "train", "--csv", str(csv), "--target", "flag", "--name", "flag"]
    assert run_cli(capsys, *train)[0] == 0
    monkeypatch.setenv("STEWARD_TRAINING_COPY_MAX_BYTES", "0")
    assert run_cli(capsys, *train)[0] == 0
    artifact = tmp_path / "elsewhere.joblib"
    joblib.dump(LogisticRegression().fit(x, x[:, 0] > 0.5), artifact)
    sample = tmp_path / "sample.csv"
    pd.DataFrame(x[:20], columns=["p", "q"]).to_csv(sample, index=False)
    register = [*where, "register", str(artifact), "--name", "flag", "--sample", str(sample)]
    assert run_cli(capsys, *register)[0] == 0
    legacy = tmp_path / "models" / "flag" / "4"
    legacy.mkdir()
    (legacy / METADATA).write_text(METADATA_BEFORE_TRAINING_DATA)

    code, out, _ = run_cli(capsys, *where, "versions", "flag")
    assert code == 0
    header, *lines = out.split("\n\n")[0].splitlines()[:5]
    start = header.index("DATA")
    width = header.index("OFFLINE METRICS") - start
    assert [line[start : start + width].rstrip() for line in lines] == [
        "csv flags.csv 40 rows (copy kept)",
        "csv flags.csv 40 rows (no copy)",
        "sample sample.csv 20 rows",
        "-",
    ]
    off = read_metadata(tmp_path / "models", "flag", 2).training_data
    assert off is not None
    assert off.no_copy_reason == "copies are off (STEWARD_TRAINING_COPY_MAX_BYTES=0)"


def test_the_data_cell_counts_rows_with_thousands_separators() -> None:
    data = TrainingData(
        sources=[
            DataSource(kind="demo", name="iris", rows=150),
            DataSource(kind="feedback", rows=1234),
        ],
    )
    assert data_cell(data) == "demo iris 150 rows + feedback 1,234 rows"


def test_models_lists_every_model_when_one_aliases_file_is_unreadable(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (models_dir / "iris" / ALIASES).write_text("{bad")
    code, out, _ = run_cli(capsys, "--models-dir", str(models_dir), "models")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert sorted(rows) == ["breast-cancer", "diabetes", "iris"]
    assert rows["diabetes"].endswith("production=1")
    assert "(aliases.json unreadable: `steward versions` says why)" in rows["iris"]


def test_status_names_what_was_refused_once() -> None:
    detail = {
        "name": "iris",
        "aliases": {"production": 1},
        "loaded": [{"version": 1, "aliases": ["production"]}],
        "refusals": [
            {
                "version": None,
                "reason": "aliases_unreadable",
                "message": "iris: refused (aliases_unreadable): aliases.json is not JSON",
            },
            {"version": 2, "reason": "checksum_mismatch", "message": "iris: refused "
             "(checksum_mismatch): sha256 differs"},
        ],
    }  # fmt: skip
    assert render_model(detail)[4:] == [
        "refused: aliases.json (aliases_unreadable): aliases.json is not JSON",
        "refused: version 2 (checksum_mismatch): sha256 differs",
    ]


def test_status_says_what_answers_each_loaded_version() -> None:
    fallback = {"reason": "checksum_mismatch", "message": "the twin's sha256 differs"}
    detail = {
        "name": "iris",
        "aliases": {"production": 1, "candidate": 2},
        "loaded": [
            {"version": 1, "aliases": ["production"], "runtime": "onnxruntime"},
            {"version": 2, "aliases": ["candidate"], "runtime": "sklearn", "fallback": fallback},
            {"version": 3, "aliases": []},  # a server from before compiled twins
        ],
    }
    assert render_model(detail)[2] == (
        "loaded:  1 (production) on onnxruntime, 2 (candidate) on sklearn (checksum_mismatch), 3"
    )


def test_versions_of_a_legacy_file_and_a_broken_version(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (models_dir / "iris" / ALIASES).write_text('{"production": 1}')
    (models_dir / "iris" / "2").mkdir()  # a version folder with no metadata
    code, out, _ = run_cli(capsys, "--models-dir", str(models_dir), "versions", "iris")
    assert code == 0
    assert "\n2        -" in out
    assert "unreadable: iris v2: unreadable metadata.json" in out
    assert out.endswith("\n\nalias history: none yet\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["versions", "nope"], "no model 'nope' in "),
        (["rollback", "nope"], "no model 'nope' in "),
        (["promote", "nope", "1"], "no model 'nope' in "),
        (["rollback", "iris"], "iris: no earlier production version to roll back to"),
    ],
)
def test_unknown_models_and_nothing_to_roll_back(
    models_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, "--models-dir", str(models_dir), *argv)
    assert (code, out) == (1, "")
    assert_one_line_error(err, message)


def test_a_corrupt_aliases_file_is_named_and_kept(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = models_dir / "iris" / ALIASES
    path.write_text('{"production": 1, "candidate": "two"}')
    for argv in (["promote", "iris", "1"], ["rollback", "iris"], ["versions", "iris"]):
        code, out, err = run_cli(capsys, "--models-dir", str(models_dir), *argv)
        assert (code, out) == (1, "")
        assert_one_line_error(err, f"{path} is not a valid aliases file")
        assert "left as it is: fix it by hand" in err
    assert path.read_text() == '{"production": 1, "candidate": "two"}'


def _env(variables: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STEWARD_")}
    return clean | variables


def test_status_with_no_server_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    code, out, err = run_cli(capsys, "status", "--url", f"http://127.0.0.1:{port}")
    assert (code, out) == (1, "")
    assert_one_line_error(err, f"no Steward server answered at http://127.0.0.1:{port}")
    assert "start one with `steward serve`, or give its address with --url" in err
    # Without --url: STEWARD_HOST and STEWARD_PORT, 0.0.0.0 asked over loopback.
    monkeypatch.setenv("STEWARD_HOST", "0.0.0.0")
    monkeypatch.setenv("STEWARD_PORT", str(port))
    code, _, err = run_cli(capsys, "status", "iris")
    assert code == 1
    assert_one_line_error(err, f"at http://127.0.0.1:{port} (")


def test_status_asks_a_real_server(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    env = _env({"STEWARD_MODELS_DIR": str(models_dir), "STEWARD_DATA_DIR": str(tmp_path / "d")})
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with serving(argv, port=port, env=env, log=tmp_path / "serve.log", ready="/readyz"):
        code, out, err = run_cli(capsys, "status", "--url", url)
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert lines[0].split() == ["MODEL", "SERVING", "ALIASES", "TRAFFIC", "REFUSED"]
        assert [line.split() for line in lines[1:]] == [
            ["breast-cancer", "1", "production=1", "none"],
            ["diabetes", "1", "production=1", "none"],
            ["iris", "1", "production=1", "none"],
        ]
        code, out, err = run_cli(capsys, "status", "iris", "--url", url + "/")
        assert (code, err) == (0, "")
        assert out.splitlines() == [
            "model:   iris",
            "aliases: production=1",
            "loaded:  1 (production) on onnxruntime",
            "traffic: none",
            "auto-rollback: off (STEWARD_AUTO_ROLLBACK*)",
        ]
        code, out, err = run_cli(capsys, "status", "nope", "--url", url)
        assert (code, out) == (1, "")
        assert_one_line_error(err, f"the server at {url} serves no model 'nope'")


# --- steward traffic ---------------------------------------------------------------------------


def test_traffic_sets_the_policy_and_versions_shows_it(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--models-dir", str(models_dir)]
    shutil.copytree(models_dir / "iris" / "1", models_dir / "iris" / "2")
    code, out, err = run_cli(capsys, *where, "traffic", "iris", "shadow")
    assert (code, out) == (1, "")
    assert_one_line_error(
        err,
        "iris: shadow needs a candidate version",
        "steward promote iris VERSION --alias candidate",
    )
    assert run_cli(capsys, *where, "promote", "iris", "2", "--alias", "candidate")[0] == 0
    code, out, err = run_cli(capsys, *where, "traffic", "iris", "shadow")
    assert (code, err) == (0, "")
    assert out == (
        "iris: traffic shadow: candidate v2 also predicts 100% of requests, never answering "
        f"({TRAFFIC_NOTE})\n"
    )
    code, out, err = run_cli(capsys, *where, "traffic", "iris", "canary", "--percent", "12.5")
    assert (code, err) == (0, "")
    assert out == f"iris: traffic canary: candidate v2 answers 12.5% of requests ({TRAFFIC_NOTE})\n"
    traffic = read_alias_file(models_dir, "iris").traffic
    assert (traffic.mode, traffic.percent, traffic.by) == ("canary", 12.5, process_actor())
    assert traffic.at is not None

    code, out, _ = run_cli(capsys, *where, "versions", "iris")
    assert code == 0
    _, shown, _ = out.split("\n\n")
    assert shown == (
        "traffic: canary: candidate v2 answers 12.5% of requests "
        f"(set {traffic.at:%Y-%m-%d %H:%M:%S}Z by {process_actor()})"
    )
    code, out, _ = run_cli(capsys, *where, "traffic", "iris", "none")
    assert out == f"iris: traffic none (production answers every request) ({TRAFFIC_NOTE})\n"
    assert read_alias_file(models_dir, "iris").traffic.mode == "none"


def test_traffic_refuses_what_the_policy_cannot_be(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--models-dir", str(models_dir)]
    shutil.copytree(models_dir / "iris" / "1", models_dir / "iris" / "2")
    run_cli(capsys, *where, "promote", "iris", "2", "--alias", "candidate")
    before = (models_dir / "iris" / ALIASES).read_bytes()
    code, out, err = run_cli(capsys, *where, "traffic", "iris", "canary")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "percent is required for canary")
    code, out, err = run_cli(capsys, *where, "traffic", "iris", "none", "--percent", "5")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "percent must be 0, or omitted, when mode is none")
    code, out, err = run_cli(capsys, *where, "traffic", "nope", "none")
    assert (code, out) == (1, "")
    assert_one_line_error(err, "no model 'nope' in ")
    assert (models_dir / "iris" / ALIASES).read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["traffic", "iris", "canary", "--percent", "101"], "a percent is a number from 0 to 100"),
        (["traffic", "iris", "canary", "--percent", "-1"], "a percent is a number from 0 to 100"),
        (["traffic", "iris", "canary", "--percent", "nan"], "a percent is a number from 0 to 100"),
        (["traffic", "iris", "canary", "--percent", "inf"], "a percent is a number from 0 to 100"),
        (
            ["traffic", "iris", "canary", "--percent", "1e999"],
            "a percent is a number from 0 to 100",
        ),
        (["traffic", "iris", "canary", "--percent", "ten"], "a percent is a number from 0 to 100"),
        (["traffic", "iris", "canary", "--percent", ""], "a percent is a number from 0 to 100"),
        (["traffic", "iris", "blue-green"], "invalid choice: 'blue-green'"),
        (["traffic", "iris"], "the following arguments are required: mode"),
        (["traffic"], "the following arguments are required: MODEL, mode"),
        (["traffic", "../iris", "none"], "a model name is 1-64 of"),
        (["traffic", "iris", "shadow", "--weight", "5"], "unrecognized arguments: --weight 5"),
    ],
)
def test_traffic_with_wrong_arguments_is_a_usage_error(
    models_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, "--models-dir", str(models_dir), *argv)
    assert (code, out) == (2, "")
    assert_one_line_error(err, message, "(see `steward")


def test_status_shows_the_traffic_policy_and_whether_it_applies() -> None:
    base = {"name": "iris", "aliases": {"production": 1, "candidate": 2}, "loaded": []}
    for traffic, line in [
        ({"mode": "none", "percent": 0}, "traffic: none"),
        ({"mode": "canary", "percent": 12.5, "active": True}, "traffic: canary 12.5% (active)"),
        (
            {"mode": "shadow", "percent": 100, "active": False, "inactive_reason": "no candidate"},
            "traffic: shadow 100% (inactive: no candidate)",
        ),
    ]:
        assert render_model(base | {"traffic": traffic})[3] == line
    summaries: list[dict[str, Any]] = [
        {"name": "iris", "serving": 1, "aliases": {"production": 1}, "traffic": "canary"},
        {"name": "wine", "serving": None, "aliases": {}, "traffic": "none", "refused": "why"},
    ]
    assert [line.split() for line in render_models(summaries)] == [
        ["MODEL", "SERVING", "ALIASES", "TRAFFIC", "REFUSED"],
        ["iris", "1", "production=1", "canary"],
        ["wine", "-", "-", "none", "why"],
    ]


def test_auto_rollback_sets_the_model_policy_and_status_shows_it(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--models-dir", str(models_dir)]
    code, out, err = run_cli(capsys, *where, "auto-rollback", "iris", "on", "--margin", "0.03")
    assert (code, err) == (0, "")
    by = process_actor()
    assert out == (
        "iris: automatic rollback on: after a promote, over at least 100 labels, margin 0.03 "
        f"(this model's own, set by {by})\n"
    )
    policy = read_alias_file(models_dir, "iris").auto_rollback
    assert policy is not None
    assert (policy.enabled, policy.min_labels, policy.margin) == (True, None, 0.03)
    code, out, _ = run_cli(capsys, *where, "auto-rollback", "iris", "off")
    assert out == f"iris: automatic rollback off (this model's own, set by {by})\n"
    turned_off = read_alias_file(models_dir, "iris").auto_rollback
    assert turned_off is not None
    assert (turned_off.enabled, turned_off.margin) == (False, None)  # the setting's margin again

    detail = {"name": "iris", "aliases": {"production": 2}, "loaded": []}
    auto = {
        "enabled": True,
        "min_labels": 100,
        "margin": 0.05,
        "source": "settings",
        "state": "waiting",
        "reason": "waiting: v2 has 3 of 100 labels since its promote",
    }
    assert render_model(detail | {"auto_rollback": auto})[4:] == [
        "auto-rollback: on: after a promote, over at least 100 labels, margin 0.05 "
        "(STEWARD_AUTO_ROLLBACK*)",
        "  waiting: v2 has 3 of 100 labels since its promote",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["auto-rollback", "nope", "on"], "no model 'nope' in "),
        (["auto-rollback", "iris", "maybe"], "invalid choice: 'maybe'"),
        (["auto-rollback", "iris"], "the following arguments are required: state"),
        (["auto-rollback", "../iris", "on"], "a model name is 1-64 of"),
        (["auto-rollback", "iris", "on", "--min-labels", "0"], "a label count is a whole number"),
        (["auto-rollback", "iris", "on", "--min-labels", "-5"], "a label count is a whole number"),
        (["auto-rollback", "iris", "on", "--min-labels", "1.5"], "a label count is a whole number"),
        (["auto-rollback", "iris", "on", "--min-labels", "9" * 30], "a label count is a whole"),
        (["auto-rollback", "iris", "on", "--min-labels", "²"], "a label count is a whole number"),
        (["auto-rollback", "iris", "on", "--margin", "nan"], "a margin is a number from 0 to 1"),
        (["auto-rollback", "iris", "on", "--margin", "inf"], "a margin is a number from 0 to 1"),
        (["auto-rollback", "iris", "on", "--margin", "1.5"], "a margin is a number from 0 to 1"),
        (["auto-rollback", "iris", "on", "--margin", "-0.1"], "a margin is a number from 0 to 1"),
        (["auto-rollback", "iris", "on", "--margin", "five"], "a margin is a number from 0 to 1"),
        (["auto-rollback", "iris", "on", "--window", "5"], "unrecognized arguments: --window 5"),
        (["auto-rollback", "iris", "off", "--margin", "0.1"], "--min-labels and --margin go with"),
        (["auto-rollback", "iris", "off", "--min-labels", "5"], "--min-labels and --margin go"),
    ],
)
def test_auto_rollback_with_wrong_arguments_is_one_line_and_writes_nothing(
    models_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    before = (models_dir / "iris" / ALIASES).read_bytes()
    code, out, err = run_cli(capsys, "--models-dir", str(models_dir), *argv)
    assert (code, out) == (1 if "no model" in message else 2, "")
    assert_one_line_error(err, message)
    assert (models_dir / "iris" / ALIASES).read_bytes() == before
