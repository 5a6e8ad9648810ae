"""The automatic rollback (app/auto_rollback.py) through real parts: the demo models and a second
version of each saved by our training code, a real SQLite store fed by the app's own prediction
log and feedback path, the real aliases file. Each check is run by hand (``check()``), the
periodic one being an hour away."""

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import DIABETES_ROW, IRIS_SETOSA, metric, predict, read_only, wait_until

from app import lifecycle
from app.aliases import read_alias_file
from app.auto_rollback import AutoRollback, assess
from app.errors import LifecycleConflict, ValidationFailed
from app.main import create_app
from app.services import Services
from app.settings import Settings
from app.training import train_demo

ROWS = {"iris": IRIS_SETOSA, "diabetes": DIABETES_ROW}


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    """Two versions of each demo model, production on 1; automatic rollback on for every model
    after 10 labels, margin 0.1; no periodic check or rescan (the tests run them)."""
    train_demo(models_dir)
    return Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "data",
        auto_rollback=True,
        auto_rollback_min_labels=10,
        auto_rollback_margin=0.1,
        auto_rollback_interval_seconds=3600,
        reload_interval_seconds=0,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def services(client: TestClient) -> Services:
    built: Services = client.app_state["services"]
    return built


def serve_and_label(client: TestClient, model: str, version: int, outcomes: list[Any]) -> None:
    """One prediction of ``model`` per outcome, served by ``version``, each labelled: for a
    classifier, True right and False wrong; for a regressor, the ground truth that many units
    above the prediction (its absolute error)."""
    response = predict(client, model, *[ROWS[model]] * len(outcomes))
    assert response.json()["version"] == version, response.text
    items = []
    for prediction, outcome in zip(response.json()["predictions"], outcomes, strict=True):
        predicted = prediction["prediction"]
        if model == "iris":
            truth = (
                predicted if outcome else ("virginica" if predicted != "virginica" else "setosa")
            )
        else:
            truth = predicted + outcome
        items.append({"prediction_id": prediction["id"], "ground_truth": truth})
    answer = client.post("/feedback", json={"items": items})
    assert answer.json()["accepted"] == len(outcomes), answer.text


def promote(client: TestClient, model: str, version: int) -> None:
    """`steward promote` (on disk, as the CLI does), then this server's rescan."""
    built = services(client)
    lifecycle.promote(built.settings.models_dir, model, version)
    built.watcher.scan()


def production(client: TestClient, model: str) -> int:
    return read_alias_file(services(client).settings.models_dir, model).aliases["production"]


def rollbacks(client: TestClient, model: str, reason: str) -> float:
    return metric(client, "steward_rollbacks_total", model=model, reason=reason)


def test_a_worse_promote_is_rolled_back_once_logged_and_counted(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    checker = services(client).auto_rollback
    serve_and_label(client, "iris", 1, [True] * 10)  # v1: accuracy 1.0 over 10
    promote(client, "iris", 2)
    serve_and_label(client, "iris", 2, [True] * 9)
    serve_and_label(client, "iris", 2, [False])  # the 10th label: judged now
    assert checker.check() == []  # 0.9 against 1.0: not worse by more than 0.1
    status = assess(services(client).settings, services(client).store, "iris")
    assert (status.state, status.labelled, status.figure) == ("within_margin", 10, 0.9)
    assert (status.previous_labelled, status.previous_figure) == (10, 1.0)

    serve_and_label(client, "iris", 2, [False] * 2)  # 9 of 12: 0.75
    with caplog.at_level(logging.WARNING, logger="app.auto_rollback"):
        (made,) = checker.check()
    assert (made.model, made.reason, made.status.state) == ("iris", "accuracy_drop", "worse")
    assert production(client, "iris") == 1
    last = read_alias_file(services(client).settings.models_dir, "iris").history[-1]
    assert (last.action, last.from_, last.to, last.by) == ("rollback", 2, 1, "auto-rollback")
    assert predict(client, "iris", IRIS_SETOSA).json()["version"] == 1  # swapped at once
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line == (
        "auto-rollback iris: production v2 -> v1 (accuracy_drop): worse by more than the margin "
        "(0.1): v2 accuracy 0.7500 over 12 labels since its promote, v1 1.0000 over 10 before it"
    )
    assert rollbacks(client, "iris", "accuracy_drop") == 1
    assert rollbacks(client, "iris", "manual") == 0

    # The latest change is now a roll-back: nothing to judge until the next promote.
    assert checker.check() == []
    assert assess(services(client).settings, services(client).store, "iris").state == "idle"
    assert rollbacks(client, "iris", "accuracy_drop") == 1


def test_a_promote_older_than_the_quality_window_is_no_longer_judged(settings: Settings) -> None:
    """Turning the policy on never judges a version that has long served: a promote is watched
    for STEWARD_QUALITY_WINDOW_SECONDS (here 5 s)."""
    watched = settings.model_copy(update={"quality_window_seconds": 5.0})
    with TestClient(create_app(watched), raise_server_exceptions=False) as client:
        serve_and_label(client, "iris", 1, [True] * 10)
        promote(client, "iris", 2)
        serve_and_label(client, "iris", 2, [False] * 10)
        assert assess(watched, services(client).store, "iris").state == "worse"
        assert wait_until(
            lambda: assess(watched, services(client).store, "iris").state == "idle", seconds=30
        )
        status = assess(watched, services(client).store, "iris")
        assert (status.state, status.reason) == (
            "idle",
            "nothing to judge: the promote to v2 is older than STEWARD_QUALITY_WINDOW_SECONDS, "
            "the span a promote is watched for",
        )
        assert services(client).auto_rollback.check() == []
        assert production(client, "iris") == 2


def test_not_judged_before_min_labels(client: TestClient) -> None:
    checker = services(client).auto_rollback
    serve_and_label(client, "iris", 1, [True] * 10)
    promote(client, "iris", 2)
    serve_and_label(client, "iris", 2, [False] * 9)
    assert checker.check() == []
    status = assess(services(client).settings, services(client).store, "iris")
    assert status.state == "waiting"
    assert status.reason == "waiting: v2 has 9 of 10 labels since its promote"
    assert production(client, "iris") == 2
    serve_and_label(client, "iris", 2, [False])
    assert [r.model for r in checker.check()] == ["iris"]
    assert production(client, "iris") == 1


def test_only_labels_since_the_promote_count(client: TestClient) -> None:
    """v2's rows served before its promote (named by ?version=2) are not its live figure."""
    serve_and_label(client, "iris", 1, [True] * 10)
    response = client.post("/predict/iris?version=2", json={"instances": [IRIS_SETOSA] * 10})
    items = [{"prediction_id": p["id"], "ground_truth": "virginica"} for p in response.json()[
        "predictions"]]  # fmt: skip
    assert client.post("/feedback", json={"items": items}).json()["accepted"] == 10
    promote(client, "iris", 2)
    assert services(client).auto_rollback.check() == []
    status = assess(services(client).settings, services(client).store, "iris")
    assert (status.state, status.labelled) == ("waiting", 0)


def test_no_rollback_when_the_version_before_has_no_labelled_figure(client: TestClient) -> None:
    predict(client, "iris", IRIS_SETOSA)  # v1 served, never labelled
    promote(client, "iris", 2)
    serve_and_label(client, "iris", 2, [False] * 10)
    assert services(client).auto_rollback.check() == []
    status = assess(services(client).settings, services(client).store, "iris")
    assert (status.state, status.labelled, status.figure) == ("no_baseline", 10, 0.0)
    assert status.previous_labelled == 0
    assert status.previous_figure is None
    assert "v1 has no labelled live accuracy" in status.reason
    assert production(client, "iris") == 2
    assert rollbacks(client, "iris", "accuracy_drop") == 0


def test_off_by_default_and_the_model_policy_overrides_the_settings(
    settings: Settings, tmp_path: Path
) -> None:
    off = settings.model_copy(update={"auto_rollback": False})
    with TestClient(create_app(off), raise_server_exceptions=False) as client:
        root = off.models_dir
        serve_and_label(client, "iris", 1, [True] * 10)
        promote(client, "iris", 2)
        serve_and_label(client, "iris", 2, [False] * 10)
        checker = services(client).auto_rollback
        assert checker.check() == []
        status = assess(off, services(client).store, "iris")
        assert (status.enabled, status.source, status.state) == (False, "settings", "off")
        assert production(client, "iris") == 2

        lifecycle.set_auto_rollback(root, "iris", True, min_labels=20, by="ops")
        status = assess(off, services(client).store, "iris")
        assert (status.enabled, status.source, status.set_by) == (True, "model", "ops")
        assert (status.min_labels, status.margin, status.state) == (20, 0.1, "waiting")
        lifecycle.set_auto_rollback(root, "iris", True, margin=0.5)
        assert assess(off, services(client).store, "iris").min_labels == 10  # the setting's
        (made,) = checker.check()  # 0.0 against 1.0, margin 0.5
        assert made.reason == "accuracy_drop"
        assert production(client, "iris") == 1

    # On for every model, off for iris alone.
    lifecycle.set_auto_rollback(settings.models_dir, "iris", False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        promote(client, "iris", 2)
        serve_and_label(client, "iris", 2, [False] * 10)
        assert services(client).auto_rollback.check() == []
        assert production(client, "iris") == 2


def test_a_regressor_is_judged_on_its_mae_with_a_relative_margin(client: TestClient) -> None:
    checker = services(client).auto_rollback
    serve_and_label(client, "diabetes", 1, [10.0] * 10)  # v1: MAE 10
    promote(client, "diabetes", 2)
    serve_and_label(client, "diabetes", 2, [11.0] * 10)  # 11 = 10 * (1 + 0.1): not worse by more
    assert checker.check() == []
    status = assess(services(client).settings, services(client).store, "diabetes")
    assert (status.metric, status.state) == ("mae", "within_margin")
    assert status.figure == pytest.approx(11.0)
    assert "(0.1 relative)" in status.reason
    serve_and_label(client, "diabetes", 2, [13.0] * 10)  # MAE 12 > 11
    (made,) = checker.check()
    assert (made.model, made.reason) == ("diabetes", "mae_rise")
    assert made.status.figure == pytest.approx(12.0)
    assert production(client, "diabetes") == 1
    assert rollbacks(client, "diabetes", "mae_rise") == 1
    assert rollbacks(client, "iris", "accuracy_drop") == 0


def test_the_baseline_is_the_version_before_while_it_was_production(client: TestClient) -> None:
    """v2's earlier stint in production (before a roll-back to v1) is not v1's figure, nor is
    what v1 served before that; v1's own time in production is."""
    serve_and_label(client, "iris", 1, [False] * 10)  # v1 as first served: left out below
    promote(client, "iris", 2)
    serve_and_label(client, "iris", 2, [True] * 3)  # v2 served: not v1's rows at all
    lifecycle.rollback(services(client).settings.models_dir, "iris")
    services(client).watcher.scan()
    serve_and_label(client, "iris", 1, [True] * 4)  # v1 in production again: its figure
    promote(client, "iris", 2)
    serve_and_label(client, "iris", 2, [True] * 8 + [False] * 2)
    (made,) = services(client).auto_rollback.check()  # 0.8 against 1.0 over 4
    assert (made.status.previous_labelled, made.status.previous_figure) == (4, 1.0)


def test_a_rollback_only_undoes_the_promote_it_judged(client: TestClient) -> None:
    """Compare-and-set: a change of production between the judgement and the roll-back (a
    person, another replica) wins; the judged promote's roll-back is refused."""
    built = services(client)
    root = built.settings.models_dir
    serve_and_label(client, "iris", 1, [True] * 10)
    promote(client, "iris", 2)
    serve_and_label(client, "iris", 2, [False] * 10)
    judged = assess(built.settings, built.store, "iris")
    assert judged.state == "worse"
    assert judged.promote is not None
    lifecycle.rollback(root, "iris")  # a person rolls back and promotes 2 again
    lifecycle.promote(root, "iris", 2)
    before = read_alias_file(root, "iris")
    with pytest.raises(LifecycleConflict, match="production changed since the promote"):
        lifecycle.rollback(root, "iris", by="auto-rollback", expect=judged.promote)
    assert read_alias_file(root, "iris") == before
    # The expected promote still the latest: the roll-back goes through, once.
    latest = assess(built.settings, built.store, "iris").promote
    assert latest is not None
    lifecycle.rollback(root, "iris", expect=latest)
    with pytest.raises(LifecycleConflict):
        lifecycle.rollback(root, "iris", expect=latest)
    assert production(client, "iris") == 1


def test_two_replicas_checking_the_same_promote_roll_back_once(client: TestClient) -> None:
    built = services(client)
    other = AutoRollback(built.settings, built.store, built.metrics)  # a second replica
    serve_and_label(client, "iris", 1, [True] * 10)
    promote(client, "iris", 2)
    serve_and_label(client, "iris", 2, [False] * 10)
    assert len(other.check()) == 1
    assert built.auto_rollback.check() == []
    history = read_alias_file(built.settings.models_dir, "iris").history
    assert [(c.action, c.to) for c in history[-2:]] == [("promote", 2), ("rollback", 1)]
    assert rollbacks(client, "iris", "accuracy_drop") == 1


def test_an_unreadable_aliases_file_is_reported_not_checked(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    built = services(client)
    (built.settings.models_dir / "iris" / "aliases.json").write_text("{bad")
    with caplog.at_level(logging.WARNING, logger="app.auto_rollback"):
        assert built.auto_rollback.check() == []
        assert built.auto_rollback.check() == []  # said once
    lines = [r.getMessage() for r in caplog.records if r.name == "app.auto_rollback"]
    assert len(lines) == 1
    assert lines[0].startswith("auto-rollback iris: not checked: ")
    body = client.get("/models/iris").json()
    assert body["auto_rollback"]["state"] == "unknown"
    assert body["auto_rollback"]["reason"].startswith("not checked: ")


def test_a_worse_promote_on_a_read_only_registry_is_said_once_not_rolled_back(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica on Kubernetes mounts the registry read-only: it cannot write the rollback, and
    says so once (docs/operations.md, Kubernetes)."""
    built = services(client)
    serve_and_label(client, "iris", 1, [True] * 10)
    promote(client, "iris", 2)
    serve_and_label(client, "iris", 2, [False] * 10)
    with read_only(built.settings.models_dir), caplog.at_level(logging.INFO, "app.auto_rollback"):
        assert built.auto_rollback.check() == []
        assert built.auto_rollback.check() == []
    (line,) = [r.getMessage() for r in caplog.records if r.name == "app.auto_rollback"]
    assert line == (
        "auto-rollback iris: not checked: the model registry is read-only here: nothing was changed"
    )
    assert production(client, "iris") == 2
    assert rollbacks(client, "iris", "accuracy_drop") == 0
    (made,) = built.auto_rollback.check()  # writable again: rolled back
    assert (made.model, made.reason) == ("iris", "accuracy_drop")
    assert production(client, "iris") == 1


def test_get_model_shows_the_policy_and_the_judgement(client: TestClient) -> None:
    body = client.get("/models/iris").json()["auto_rollback"]
    assert body["enabled"] is True
    assert (body["min_labels"], body["margin"], body["source"]) == (10, 0.1, "settings")
    assert body["state"] == "idle"
    serve_and_label(client, "iris", 1, [True] * 10)
    promote(client, "iris", 2)
    serve_and_label(client, "iris", 2, [True] * 3)
    body = client.get("/models/iris").json()["auto_rollback"]
    assert (body["state"], body["metric"], body["labelled"]) == ("waiting", "accuracy", 3)
    assert (body["promote"]["from"], body["promote"]["to"]) == (1, 2)


def test_a_version_before_that_cannot_serve_is_not_rolled_back_to_and_said_once(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    built = services(client)
    serve_and_label(client, "iris", 1, [True] * 10)
    promote(client, "iris", 2)
    serve_and_label(client, "iris", 2, [False] * 10)
    shutil.rmtree(built.settings.models_dir / "iris" / "1")  # its files gone
    with caplog.at_level(logging.INFO, logger="app.auto_rollback"):
        assert built.auto_rollback.check() == []
        assert built.auto_rollback.check() == []
    (line,) = [r.getMessage() for r in caplog.records if r.name == "app.auto_rollback"]
    assert line.startswith(
        "auto-rollback iris: not rolled back: cannot roll iris back to version 1"
    )
    assert production(client, "iris") == 2
    assert rollbacks(client, "iris", "accuracy_drop") == 0


@pytest.mark.parametrize(
    ("enabled", "min_labels", "margin", "field"),
    [
        ("yes", None, None, "enabled"),
        (1, None, None, "enabled"),
        (True, 0, None, "min_labels"),
        (True, 10**12, None, "min_labels"),
        (True, True, None, "min_labels"),
        (True, 2.0, None, "min_labels"),
        (True, None, -0.1, "margin"),
        (True, None, 1.01, "margin"),
        (True, None, float("nan"), "margin"),
        (True, None, float("inf"), "margin"),
        (True, None, "0.1", "margin"),
        (True, None, False, "margin"),
    ],
)
def test_set_auto_rollback_refuses_bad_values_naming_the_field(
    models_dir: Path, enabled: Any, min_labels: Any, margin: Any, field: str
) -> None:
    before = (models_dir / "iris" / "aliases.json").read_bytes()
    with pytest.raises(ValidationFailed) as refused:
        lifecycle.set_auto_rollback(models_dir, "iris", enabled, min_labels, margin)
    assert [d["field"] for d in refused.value.details] == [field]
    assert (models_dir / "iris" / "aliases.json").read_bytes() == before


def test_the_model_policy_survives_promotes_roll_backs_and_traffic_changes(
    models_dir: Path,
) -> None:
    train_demo(models_dir)
    policy = lifecycle.set_auto_rollback(models_dir, "iris", True, 20, 0.02, by="ops")
    lifecycle.promote(models_dir, "iris", 2, "candidate")
    lifecycle.set_traffic(models_dir, "iris", "shadow")
    lifecycle.promote(models_dir, "iris", 2)
    lifecycle.rollback(models_dir, "iris")
    kept = read_alias_file(models_dir, "iris")
    assert kept.auto_rollback == policy
    assert kept.aliases == {"production": 1, "candidate": 2}
    assert "auto_rollback" not in (models_dir / "diabetes" / "aliases.json").read_text()
