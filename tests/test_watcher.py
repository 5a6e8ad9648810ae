"""Hot swap: registry changes on disk reach a serving app by themselves, and a change that
cannot be applied keeps the last good state serving."""

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import IRIS_SETOSA, predict, save_broken_iris, wait_until
from server import STEWARD

from app import lifecycle
from app.aliases import ALIASES, process_actor, set_alias
from app.artifacts import ARTIFACT, load_estimator, read_metadata, save_version
from app.main import create_app
from app.prediction import scores_typical_row
from app.registry import Registry
from app.services import Services
from app.settings import Settings
from app.training import train_demo
from app.watcher import AliasMove, Watcher

DEMOS = {"breast-cancer": 1, "diabetes": 1, "iris": 1}


def tamper(models_dir: Path, name: str, version: int) -> None:
    artifact = models_dir / name / str(version) / ARTIFACT
    artifact.write_bytes(artifact.read_bytes() + b"tampered")


# --- Watcher.scan on a registry, no app ------------------------------------------------------


def test_a_rescan_with_nothing_changed_reports_nothing(models_dir: Path) -> None:
    registry = Registry(models_dir, 100, warm_up=scores_typical_row)
    registry.load()
    report = Watcher(registry, 0).scan()
    assert not report.changed
    assert {n: m.version for n, m in registry.production().items()} == DEMOS


def test_a_rescan_applies_the_aliases_file_whole(models_dir: Path) -> None:
    registry = Registry(models_dir, 100, warm_up=scores_typical_row)
    registry.load()
    watcher = Watcher(registry, 0)
    train_demo(models_dir)  # v2 of each; production stays 1
    report = watcher.scan()
    assert report.versions == {"breast-cancer": [2], "diabetes": [2], "iris": [2]}
    assert report.moved == []

    set_alias(models_dir, "iris", "production", 2)
    set_alias(models_dir, "iris", "candidate", 1)
    report = watcher.scan()
    assert report.moved == [
        AliasMove(model="iris", alias="candidate", old=None, new=1),
        AliasMove(model="iris", alias="production", old=1, new=2),
    ]
    assert report.unloaded == {}  # v1 is the candidate now: still loaded
    assert sorted(registry.entry("iris").state.loaded) == [1, 2]

    (models_dir / "iris" / ALIASES).write_text('{"production": 2}')  # candidate removed
    report = watcher.scan()
    assert report.moved == [AliasMove(model="iris", alias="candidate", old=1, new=None)]
    assert report.unloaded == {"iris": [1]}
    assert registry.entry("iris").state.aliases == {"production": 2}
    assert sorted(registry.entry("iris").state.loaded) == [2]


def test_a_new_model_is_added_with_its_production_version(models_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    registry = Registry(empty, 100, warm_up=scores_typical_row)
    registry.load()
    assert registry.names == []
    (empty / "iris").symlink_to(models_dir / "iris", target_is_directory=True)
    report = Watcher(registry, 0).scan()
    assert report.added == ["iris"]
    assert registry.production()["iris"].version == 1
    assert not Watcher(registry, 0).scan().changed


def test_a_version_that_fails_its_warm_up_is_refused_and_the_old_one_serves(
    models_dir: Path,
) -> None:
    broken = save_broken_iris(models_dir)
    registry = Registry(models_dir, 100, warm_up=scores_typical_row)
    registry.load()
    refused: list[tuple[object, ...]] = []
    registry.on_refuse.append(lambda e, r: refused.append((e.name, r.version, r.reason)))
    watcher = Watcher(registry, 0)
    set_alias(models_dir, "iris", "production", broken)
    report = watcher.scan()
    assert report.moved == []
    (problem,) = report.refused
    assert (problem.model, problem.reason) == ("iris", "warmup_failed")
    assert "v1 keeps serving" in problem.message
    assert registry.production()["iris"].version == 1
    assert registry.refused()["iris"].reason == "warmup_failed"
    assert refused == [("iris", broken, "warmup_failed"), ("iris", None, "warmup_failed")]
    watcher.scan()  # the same file again: nothing announced twice
    assert len(refused) == 2

    set_alias(models_dir, "iris", "production", 1)  # the operator rolls back
    assert not watcher.scan().refused
    assert registry.refused() == {}
    assert broken not in registry.entry("iris").state.loaded


def test_a_model_whose_aliases_were_unreadable_at_start_up_serves_once_fixed(
    models_dir: Path,
) -> None:
    (models_dir / "iris" / ALIASES).write_text("[1]")
    registry = Registry(models_dir, 100, warm_up=scores_typical_row)
    registry.load()
    assert registry.refused()["iris"].reason == "aliases_unreadable"
    watcher = Watcher(registry, 0)
    assert [p.reason for p in watcher.scan().refused] == ["aliases_unreadable"]
    assert registry.refused()["iris"].reason == "aliases_unreadable"
    refused: list[str] = []
    registry.on_refuse.append(lambda e, r: refused.append(r.message))
    watcher.scan()
    assert refused == []  # the refusal of start-up, not a new one
    (models_dir / "iris" / ALIASES).write_text('{"production": 1}')
    report = watcher.scan()
    assert report.moved == [AliasMove(model="iris", alias="production", old=None, new=1)]
    assert registry.production()["iris"].version == 1
    assert registry.refused() == {}


def test_a_production_version_missing_at_start_up_is_refused_until_it_exists(
    models_dir: Path,
) -> None:
    (models_dir / "iris" / ALIASES).write_text('{"production": 2}')
    registry = Registry(models_dir, 100, warm_up=scores_typical_row)
    registry.load()
    assert registry.refused()["iris"].reason == "unknown_version"
    assert "iris" not in registry.production()
    watcher = Watcher(registry, 0)
    (problem,) = watcher.scan().refused
    assert problem.message.startswith("production -> v2 not applied (it stays unset)")
    assert registry.refused()["iris"].reason == "unknown_version"
    train_demo(models_dir)  # now iris v2 exists
    report = watcher.scan()
    assert report.moved == [AliasMove(model="iris", alias="production", old=None, new=2)]
    assert registry.production()["iris"].version == 2
    assert registry.refused() == {}


# --- a serving app ---------------------------------------------------------------------------


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Settings that rescan the registry every 50 ms."""
    return settings.model_copy(update={"reload_interval_seconds": 0.05})


@pytest.fixture
def served(fast: Settings) -> Iterator[TestClient]:
    train_demo(fast.models_dir)  # v2 of each demo; production stays 1
    with TestClient(create_app(fast), raise_server_exceptions=False) as client:
        yield client


def serving(client: TestClient, name: str) -> int | None:
    response = predict(client, name, IRIS_SETOSA)
    assert response.status_code == 200, response.text
    version: int = response.json()["version"]
    return version


def info(client: TestClient, **labels: str) -> float | None:
    services: Services = client.app_state["services"]
    return services.metrics.registry.get_sample_value("steward_model_info", labels)


def test_a_promotion_on_disk_is_served_without_restart(served: TestClient, fast: Settings) -> None:
    assert serving(served, "iris") == 1
    set_alias(fast.models_dir, "iris", "production", 2)
    # The swap, then its hooks (the info gauge): one wait for both.
    assert wait_until(
        lambda: (
            serving(served, "iris") == 2
            and info(served, model="iris", version="2", alias="production") == 1
        ),
        seconds=20,
    )
    iris = {m["name"]: m for m in served.get("/models").json()}["iris"]
    assert (iris["serving"], iris["aliases"], iris["versions"]) == (2, {"production": 2}, [1, 2])
    assert info(served, model="iris", version="1", alias="production") is None
    # the old version is unloaded once no alias points at it
    assert wait_until(lambda: info(served, model="iris", version="1", alias="") is None)
    assert [v["version"] for v in served.get("/models/iris").json()["loaded"]] == [2]
    assert served.get("/readyz").json()["models"] == {**DEMOS, "iris": 2}


def test_a_new_model_is_served_without_restart(served: TestClient, fast: Settings) -> None:
    assert served.post("/predict/iris2", json={"instances": [IRIS_SETOSA]}).status_code == 404
    metadata = read_metadata(fast.models_dir, "iris", 1)
    estimator = load_estimator(fast.models_dir, metadata)
    save_version(fast.models_dir, metadata.model_copy(update={"name": "iris2"}), estimator)
    assert wait_until(lambda: predict(served, "iris2", IRIS_SETOSA).status_code == 200, seconds=20)
    assert serving(served, "iris2") == 1
    assert "iris2" in [m["name"] for m in served.get("/models").json()]
    assert info(served, model="iris2", version="1", alias="production") == 1


@pytest.mark.parametrize("breakage", ["checksum_mismatch", "warmup_failed"])
def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(
    served: TestClient, fast: Settings, breakage: str
) -> None:
    if breakage == "checksum_mismatch":
        version = 2
        tamper(fast.models_dir, "iris", version)
    else:
        version = save_broken_iris(fast.models_dir)
    set_alias(fast.models_dir, "iris", "production", version)

    def degraded() -> bool:
        return bool(served.get("/readyz").json()["status"] == "degraded")

    assert wait_until(degraded, seconds=20)
    body = served.get("/readyz").json()
    (problem,) = body["degraded"]
    assert (problem["component"], problem["reason"]) == ("model:iris", breakage)
    assert body["models"]["iris"] == 1
    assert serving(served, "iris") == 1
    services: Services = served.app_state["services"]
    refused = {"model": "iris", "reason": breakage}
    assert services.metrics.registry.get_sample_value("steward_model_refused", refused) == 1
    iris = {m["name"]: m for m in served.get("/models").json()}["iris"]
    assert iris["serving"] == 1
    assert f"production -> v{version} not applied (v1 keeps serving)" in iris["refused"]

    set_alias(fast.models_dir, "iris", "production", 1)  # back to the good one: ready again
    assert wait_until(lambda: served.get("/readyz").json()["status"] == "ready", seconds=20)
    assert serving(served, "iris") == 1


def test_a_corrupt_aliases_file_keeps_serving_the_last_good_state(
    served: TestClient, fast: Settings
) -> None:
    services: Services = served.app_state["services"]
    (fast.models_dir / "iris" / ALIASES).write_text('{"production": ')  # written by hand
    refused = {"model": "iris", "reason": "aliases_unreadable"}

    def counted() -> bool:
        value = services.metrics.registry.get_sample_value("steward_model_refused", refused)
        return value == 1

    assert wait_until(counted, seconds=20)
    assert serving(served, "iris") == 1
    body = served.get("/readyz").json()
    assert (body["status"], body["models"]) == ("degraded", DEMOS)
    assert [p["reason"] for p in body["degraded"]] == ["aliases_unreadable"]

    set_alias_file = fast.models_dir / "iris" / ALIASES
    set_alias_file.write_text('{"production": 2}')  # fixed, and promoted at once
    # The swap, then the refusal cleared: one wait for both.
    assert wait_until(
        lambda: serving(served, "iris") == 2 and served.get("/readyz").json()["status"] == "ready",
        seconds=20,
    )
    assert services.metrics.registry.get_sample_value("steward_model_refused", refused) is None


def test_an_alias_naming_a_missing_version_is_refused(served: TestClient, fast: Settings) -> None:
    (fast.models_dir / "iris" / ALIASES).write_text('{"production": 9}')
    assert wait_until(lambda: served.get("/readyz").json()["status"] == "degraded", seconds=20)
    (problem,) = served.get("/readyz").json()["degraded"]
    assert problem["reason"] == "unknown_version"
    assert "production -> v9 not applied (v1 keeps serving)" in problem["message"]
    assert serving(served, "iris") == 1


def test_the_interval_is_off_at_zero_and_reload_still_rescans(settings: Settings) -> None:
    train_demo(settings.models_dir)
    off = settings.model_copy(update={"reload_interval_seconds": 0})
    with TestClient(create_app(off)) as client:
        set_alias(off.models_dir, "iris", "production", 2)
        services: Services = client.app_state["services"]
        assert serving(client, "iris") == 1  # nothing rescans by itself
        assert client.portal is not None
        report = client.portal.call(services.watcher.reload)  # what POST /admin/reload calls
        assert report.moved == [AliasMove(model="iris", alias="production", old=1, new=2)]
        assert report.unloaded == {"iris": [1]}
        assert serving(client, "iris") == 2


def test_the_only_model_at_start_up_stays_the_default_when_another_appears(
    models_dir: Path, tmp_path: Path
) -> None:
    """POST /predict serves the only model; a model added while serving (trained, registered,
    or just a new folder) does not take the default away."""
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "iris").symlink_to(models_dir / "iris", target_is_directory=True)
    settings = Settings(models_dir=alone, data_dir=tmp_path / "d", reload_interval_seconds=0)
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict", json={"instances": [IRIS_SETOSA]}).json()["model"] == "iris"
        (alone / "diabetes").symlink_to(models_dir / "diabetes", target_is_directory=True)
        services: Services = client.app_state["services"]
        assert services.watcher.scan().added == ["diabetes"]
        answer = client.post("/predict", json={"instances": [IRIS_SETOSA]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "iris"


# --- The traffic policy ------------------------------------------------------------------------


def test_a_traffic_policy_on_disk_reaches_the_registry_after_the_aliases(
    models_dir: Path,
) -> None:
    train_demo(models_dir)  # v2 of each demo
    set_alias(models_dir, "iris", "candidate", 2)
    registry = Registry(models_dir, 100, warm_up=scores_typical_row)
    registry.load()
    watcher = Watcher(registry, 0)
    entry = registry.entry("iris")
    assert sorted(entry.state.loaded) == [1]  # mode none: the candidate waits for a request

    policy = lifecycle.set_traffic(models_dir, "iris", "shadow", 40).traffic
    report = watcher.scan()
    assert report.traffic == {"iris": policy}
    assert report.changed
    assert (report.moved, report.refused) == ([], [])
    assert entry.state.traffic == policy
    assert sorted(entry.state.loaded) == [1, 2]  # loaded (and warmed up) for the policy
    assert entry.state.challenger is entry.state.loaded[2]
    assert not watcher.scan().changed

    train_demo(models_dir)  # v3
    set_alias(models_dir, "iris", "candidate", 3)  # the candidate moves: the policy ends
    report = watcher.scan()
    assert report.moved == [AliasMove(model="iris", alias="candidate", old=2, new=3)]
    assert report.traffic["iris"].mode == "none"
    assert report.unloaded == {"iris": [2]}
    assert entry.state.challenger is None
    assert entry.state.traffic.mode == "none"

    policy = lifecycle.set_traffic(models_dir, "iris", "shadow", 40).traffic  # for v3
    watcher.scan()
    assert entry.state.challenger is entry.state.loaded[3]
    raw = json.loads((models_dir / "iris" / ALIASES).read_text())
    del raw["aliases"]["candidate"]  # removed by hand: production answers everything
    (models_dir / "iris" / ALIASES).write_text(json.dumps(raw))
    report = watcher.scan()
    assert report.moved == [AliasMove(model="iris", alias="candidate", old=3, new=None)]
    assert entry.state.challenger is None
    assert entry.state.traffic == policy
    reason = entry.traffic_status().inactive_reason
    assert reason == "set for candidate v3, which the candidate alias has left"

    (models_dir / "iris" / ALIASES).write_text('{"production": 1}')  # the first format: none
    report = watcher.scan()
    assert list(report.traffic) == ["iris"]
    assert (entry.state.traffic.mode, entry.state.traffic.percent) == ("none", 0.0)


def test_a_candidate_refused_when_its_policy_starts_is_reported_once(models_dir: Path) -> None:
    broken = save_broken_iris(models_dir)
    set_alias(models_dir, "iris", "candidate", broken)
    registry = Registry(models_dir, 100, warm_up=scores_typical_row)
    registry.load()
    watcher = Watcher(registry, 0)
    lifecycle.set_traffic(models_dir, "iris", "shadow", 10)
    report = watcher.scan()
    (problem,) = report.refused
    assert (problem.model, problem.reason) == ("iris", "warmup_failed")
    assert problem.message.startswith(f"traffic shadow: candidate v{broken} not loaded: ")
    assert list(report.traffic) == ["iris"]
    assert registry.refused() == {}  # production serves: the model is not degraded
    assert registry.production()["iris"].version == 1
    assert registry.entry("iris").state.challenger is None
    reason = registry.entry("iris").traffic_status().inactive_reason
    assert reason == f"candidate v{broken} is refused"
    assert not watcher.scan().changed  # not tried, nor reported, again


def traffic_gauge(client: TestClient, model: str, mode: str) -> float | None:
    services: Services = client.app_state["services"]
    labels = {"model": model, "mode": mode}
    return services.metrics.registry.get_sample_value("steward_model_traffic_percent", labels)


def steward(models_dir: Path, *argv: str) -> str:
    """Run the `steward` command in its own process; its stdout."""
    done = subprocess.run(
        [STEWARD, "--models-dir", str(models_dir), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_policy_set_by_the_cli_is_picked_up_shown_and_measured(
    served: TestClient, fast: Settings
) -> None:
    assert traffic_gauge(served, "iris", "none") == 0
    steward(fast.models_dir, "promote", "iris", "2", "--alias", "candidate")
    out = steward(fast.models_dir, "traffic", "iris", "canary", "--percent", "30")
    assert out.startswith("iris: traffic canary: candidate v2 answers 30% of requests")

    def shown() -> bool:
        return bool(served.get("/models/iris").json()["traffic"]["active"])

    assert wait_until(shown, seconds=20)
    traffic = served.get("/models/iris").json()["traffic"]
    assert {k: traffic[k] for k in ("mode", "percent", "active", "inactive_reason")} == {
        "mode": "canary",
        "percent": 30.0,
        "active": True,
        "inactive_reason": None,
    }
    assert traffic["by"] == process_actor()
    summaries = {m["name"]: m["traffic"] for m in served.get("/models").json()}
    assert summaries == {"breast-cancer": "none", "diabetes": "none", "iris": "canary"}
    assert traffic_gauge(served, "iris", "canary") == 30
    assert traffic_gauge(served, "iris", "none") is None  # the old mode's series went
    assert traffic_gauge(served, "diabetes", "none") == 0

    steward(fast.models_dir, "promote", "iris", "2")  # production onto the candidate: ended
    assert wait_until(lambda: traffic_gauge(served, "iris", "none") == 0, seconds=20)
    assert traffic_gauge(served, "iris", "canary") is None
    traffic = served.get("/models/iris").json()["traffic"]
    assert (traffic["mode"], traffic["active"]) == ("none", False)
    assert serving(served, "iris") == 2
