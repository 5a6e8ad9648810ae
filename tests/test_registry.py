"""The registry: what loads, what is refused and why, how requests resolve, how versions are
swapped at run time, and what its hooks are told."""

import json
import logging
import threading
from pathlib import Path

import pytest
from helpers import save_broken_iris

from app import lifecycle
from app.aliases import TrafficPolicy, read_aliases, set_alias
from app.artifacts import ARTIFACT, METADATA, load_estimator, read_metadata, save_version
from app.errors import ModelUnavailable, UnknownModel, UnknownVersion
from app.loading import LoadedModel
from app.model_entry import ModelEntry
from app.prediction import scores_typical_row
from app.registry import Registry
from app.training import train_demo


def loaded(models_dir: Path) -> Registry:
    registry = Registry(models_dir, max_instances=100)
    registry.load()
    return registry


class Events:
    """Every hook call of a registry, in order, as plain tuples."""

    def __init__(self, registry: Registry) -> None:
        self.seen: list[tuple[object, ...]] = []
        registry.on_load.append(lambda e, m: self.seen.append(("load", e.name, m.version)))
        registry.on_swap.append(lambda e, *moved: self.seen.append(("swap", e.name, *moved)))
        registry.on_refuse.append(
            lambda e, r: self.seen.append(("refuse", e.name, r.version, r.reason))
        )
        registry.on_unload.append(lambda e, m: self.seen.append(("unload", e.name, m.version)))


def tamper(models_dir: Path, name: str, version: int) -> None:
    """Change a version's artifact after registration: its checksum no longer matches."""
    artifact = models_dir / name / str(version) / ARTIFACT
    artifact.write_bytes(artifact.read_bytes() + b"tampered")


def test_loads_the_production_version_of_every_model(models_dir: Path) -> None:
    registry = loaded(models_dir)
    assert registry.names == ["breast-cancer", "diabetes", "iris"]
    assert [entry.state.refusals for entry in registry.entries] == [{}, {}, {}]
    for name in registry.names:
        (model,) = registry.entry(name).state.loaded.values()
        assert (model.name, model.version) == (name, 1)
        assert model.sklearn_mismatch is None


def test_resolves_numbers_and_aliases(models_dir: Path) -> None:
    train_demo(models_dir)
    set_alias(models_dir, "iris", "candidate", 2)
    registry = loaded(models_dir)
    assert registry.resolve("iris").version == 1
    assert registry.resolve("iris", "production").version == 1
    assert registry.resolve("iris", "candidate").version == 2
    assert registry.resolve("iris", "2").version == 2
    assert registry.cached("iris", "2") is registry.resolve("iris", "2")  # loaded once
    with pytest.raises(UnknownModel):
        registry.resolve("nope")
    with pytest.raises(UnknownVersion):
        registry.resolve("iris", "3")
    with pytest.raises(UnknownVersion):
        registry.resolve("iris", "staging")


def test_on_load_is_told_each_loaded_version_and_its_aliases(models_dir: Path) -> None:
    seen: list[tuple[str, int, list[str]]] = []

    def on_load(entry: ModelEntry, model: LoadedModel) -> None:
        seen.append((model.name, model.version, entry.state.aliases_of(model.version)))

    registry = Registry(models_dir, 100)
    registry.on_load.append(on_load)
    registry.load()
    assert sorted(seen) == [
        ("breast-cancer", 1, ["production"]),
        ("diabetes", 1, ["production"]),
        ("iris", 1, ["production"]),
    ]


def test_tampered_artifact_is_refused_and_the_others_serve(models_dir: Path) -> None:
    artifact = models_dir / "iris" / "1" / ARTIFACT
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    registry = loaded(models_dir)
    (refusal,) = [r for entry in registry.entries for r in entry.state.refusals.values()]
    assert (refusal.model, refusal.version, refusal.reason) == ("iris", 1, "checksum_mismatch")
    assert "sha256" in refusal.message
    with pytest.raises(ModelUnavailable):
        registry.resolve("iris")
    assert registry.resolve("diabetes").version == 1
    assert registry.resolve("breast-cancer").version == 1


def test_unloadable_artifact_is_refused(models_dir: Path) -> None:
    folder = models_dir / "diabetes" / "1"
    garbage = b"this is not a pickle"
    (folder / ARTIFACT).write_bytes(garbage)
    metadata = json.loads((folder / METADATA).read_text())
    import hashlib

    metadata["sha256"] = hashlib.sha256(garbage).hexdigest()  # checksum right, content wrong
    (folder / METADATA).write_text(json.dumps(metadata))
    registry = loaded(models_dir)
    assert registry.entry("diabetes").state.refusals[1].reason == "load_error"
    assert registry.resolve("iris").version == 1


def test_unreadable_metadata_is_refused(models_dir: Path) -> None:
    (models_dir / "iris" / "1" / METADATA).write_text("{not json")
    registry = loaded(models_dir)
    assert registry.entry("iris").state.refusals[1].reason == "metadata_error"


def test_unreadable_aliases_are_refused(models_dir: Path) -> None:
    (models_dir / "iris" / "aliases.json").write_text('{"production": "one"}')
    registry = loaded(models_dir)
    assert registry.entry("iris").state.refusals[None].reason == "aliases_unreadable"
    # A request for its production version is told why (503), not "no production version".
    with pytest.raises(ModelUnavailable, match=r"refused \(aliases_unreadable\)"):
        registry.cached("iris")


def test_other_scikit_learn_version_is_reported(models_dir: Path) -> None:
    path = models_dir / "iris" / "1" / METADATA
    metadata = json.loads(path.read_text())
    metadata["sklearn_version"] = "0.24.2"
    path.write_text(json.dumps(metadata))
    registry = loaded(models_dir)
    model = registry.resolve("iris")
    assert model.sklearn_mismatch is not None
    assert "0.24.2" in model.sklearn_mismatch
    assert registry.entry("iris").state.refusals == {}  # reported, still served


def test_model_without_production_is_listed_not_served(models_dir: Path) -> None:
    (models_dir / "iris" / "aliases.json").unlink()
    registry = loaded(models_dir)
    assert "iris" in registry.names
    assert registry.entry("iris").state.loaded == {}
    with pytest.raises(UnknownVersion, match="no production version"):
        registry.resolve("iris")
    assert registry.resolve("iris", "1").version == 1  # by number it still resolves


def test_default_name(models_dir: Path) -> None:
    registry = loaded(models_dir)
    assert registry.default_name("diabetes") == "diabetes"
    with pytest.raises(UnknownModel):
        registry.default_name(None)


def test_empty_or_missing_registry(tmp_path: Path) -> None:
    registry = loaded(tmp_path / "nothing-here")
    assert registry.names == []
    with pytest.raises(UnknownModel):
        registry.resolve("iris")


def test_a_swap_loads_the_version_first_then_moves_the_alias_in_memory(models_dir: Path) -> None:
    train_demo(models_dir)  # version 2 of each demo; production stays 1
    registry = Registry(models_dir, max_instances=100)
    events = Events(registry)
    registry.load()
    assert ("load", "iris", 1) in events.seen
    events.seen.clear()

    assert registry.point("iris", "production", 2).version == 2
    assert events.seen == [("load", "iris", 2), ("swap", "iris", "production", 1, 2)]
    assert registry.resolve("iris").version == 2
    assert registry.entry("iris").state.aliases == {"production": 2}
    assert registry.cached("iris", "1") is not None  # the old version stays loaded until unloaded
    assert registry.production()["iris"].version == 2
    # In memory only: the file is not this method's.
    assert read_aliases(models_dir, "iris") == {"production": 1}

    registry.point("iris", "production", 2)  # already there: no event
    registry.point("iris", "candidate", 1)  # a new alias: no old version, nothing loaded
    assert events.seen[2:] == [("swap", "iris", "candidate", None, 1)]


def test_unload_takes_a_version_without_alias_out_of_memory(models_dir: Path) -> None:
    train_demo(models_dir)
    registry = loaded(models_dir)
    events = Events(registry)
    registry.point("iris", "production", 2)
    with pytest.raises(ValueError, match="production"):
        registry.unload("iris", 2)  # still served
    registry.unload("iris", 1)
    registry.unload("iris", 1)  # not loaded any more: nothing happens
    assert events.seen[-1:] == [("unload", "iris", 1)]
    assert sorted(registry.entry("iris").state.loaded) == [2]
    assert registry.cached("iris", "1") is None  # a request for it by number loads it again
    assert registry.resolve("iris", "1").version == 1
    assert events.seen[-1:] == [("load", "iris", 1)]


def test_a_refused_swap_keeps_the_old_version_serving(models_dir: Path) -> None:
    train_demo(models_dir)
    tamper(models_dir, "iris", 2)
    registry = loaded(models_dir)
    events = Events(registry)
    with pytest.raises(ModelUnavailable, match="checksum_mismatch"):
        registry.point("iris", "production", 2)
    assert events.seen == [("refuse", "iris", 2, "checksum_mismatch")]
    assert registry.entry("iris").state.aliases == {"production": 1}
    assert registry.resolve("iris").version == 1
    with pytest.raises(ModelUnavailable, match="checksum_mismatch"):
        registry.point("iris", "production", 2)  # refused once: not announced again
    assert len(events.seen) == 1


def test_a_refusal_on_a_later_load_fires_on_refuse_once(models_dir: Path) -> None:
    train_demo(models_dir)
    tamper(models_dir, "iris", 2)
    registry = loaded(models_dir)
    events = Events(registry)
    for _ in range(2):
        with pytest.raises(ModelUnavailable):
            registry.resolve("iris", "2")
    assert events.seen == [("refuse", "iris", 2, "checksum_mismatch")]
    assert registry.refused() == {}  # production still serves: the model is not refused
    assert registry.entry("iris").state.refusals[2].reason == "checksum_mismatch"


def test_a_failing_hook_is_logged_and_the_swap_stands(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_demo(models_dir)
    registry = loaded(models_dir)

    def broken(*_: object) -> None:
        raise RuntimeError("subscriber bug")

    registry.on_swap.append(broken)
    events = Events(registry)
    registry.point("iris", "production", 2)
    assert events.seen[-1] == ("swap", "iris", "production", 1, 2)
    assert registry.resolve("iris").version == 2
    assert "subscriber bug" in caplog.text


def test_requests_resolve_the_old_or_the_new_version_never_neither(models_dir: Path) -> None:
    """A reader resolving production from another thread while production moves back and
    forth, each old version unloaded after the move, always finds a loaded version."""
    train_demo(models_dir)
    registry = loaded(models_dir)
    seen: set[int | None] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            model = registry.cached("iris")
            seen.add(model.version if model is not None else None)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        # At least 20 moves, and on until the reader has seen both versions (bounded: the
        # reader only needs the GIL now and then, and each move loads a model from disk).
        for moves, (new, old) in enumerate([(2, 1), (1, 2)] * 500):
            registry.point("iris", "production", new)
            registry.unload("iris", old)
            if moves >= 20 and {1, 2} <= seen:
                break
    finally:
        done.set()
        reader.join()
    assert seen == {1, 2}


def test_a_version_loaded_after_start_up_is_warmed_up_or_refused(models_dir: Path) -> None:
    """The warm-up decides for a swap's target and a version first asked for by number; a
    production version loaded at start-up is served without it."""
    train_demo(models_dir)
    verdicts = {1: False, 2: False}
    registry = Registry(models_dir, 100, warm_up=lambda model: verdicts[model.version])
    events = Events(registry)
    registry.load()
    assert registry.resolve("iris").version == 1  # start-up: no warm-up
    with pytest.raises(ModelUnavailable, match="warmup_failed"):
        registry.point("iris", "production", 2)
    assert registry.resolve("iris").version == 1
    assert ("refuse", "iris", 2, "warmup_failed") in events.seen
    assert ("load", "iris", 2) not in events.seen  # refused before it was ever served
    with pytest.raises(ModelUnavailable, match="warmup_failed"):
        registry.resolve("diabetes", "2")


def test_an_alias_removed_and_the_aliases_refusal_cleared_are_announced(models_dir: Path) -> None:
    train_demo(models_dir)
    registry = loaded(models_dir)
    events = Events(registry)
    cleared: list[str] = []
    registry.on_clear.append(lambda e, r: cleared.append(r.reason))
    registry.point("iris", "candidate", 2)
    assert registry.unset("iris", "candidate") == 2
    assert registry.unset("iris", "candidate") is None  # gone already: nothing
    assert events.seen[-1] == ("swap", "iris", "candidate", 2, None)
    assert registry.entry("iris").state.aliases == {"production": 1}

    assert registry.refuse_aliases("iris", "aliases_unreadable", "bad JSON") is not None
    assert registry.refuse_aliases("iris", "aliases_unreadable", "bad JSON") is None  # once
    assert registry.refused()["iris"].reason == "aliases_unreadable"
    assert registry.resolve("iris").version == 1  # still serving
    assert registry.clear_aliases_refusal("iris") is not None
    assert registry.clear_aliases_refusal("iris") is None
    assert (cleared, registry.refused()) == (["aliases_unreadable"], {})
    assert [e for e in events.seen if e[0] == "refuse"] == [
        ("refuse", "iris", None, "aliases_unreadable")
    ]


def test_add_and_refresh_versions_pick_up_what_appeared_on_disk(
    models_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "later"
    root.mkdir()
    registry = loaded(root)
    (root / "iris").symlink_to(models_dir / "iris", target_is_directory=True)
    entry = registry.add("iris")
    assert registry.add("iris") is entry  # idempotent
    assert registry.names == ["iris"]
    assert registry.resolve("iris").version == 1
    assert registry.refresh_versions("iris") == []
    train_demo(models_dir)
    assert registry.refresh_versions("iris") == [2]
    assert entry.state.versions == (1, 2)


# --- The traffic policy ------------------------------------------------------------------------


def traffic_events(registry: Registry) -> list[tuple[object, ...]]:
    seen: list[tuple[object, ...]] = []
    registry.on_traffic.append(
        lambda e, old, new: seen.append(
            (e.name, old and (old.mode, old.percent), (new.mode, new.percent))
        )
    )
    return seen


def test_a_shadow_in_the_file_loads_the_candidate_at_start_up(models_dir: Path) -> None:
    train_demo(models_dir)  # version 2 of each demo; production stays 1
    set_alias(models_dir, "iris", "candidate", 2)
    set_alias(models_dir, "diabetes", "candidate", 2)  # traffic none: loaded on first use
    lifecycle.set_traffic(models_dir, "iris", "shadow", by="ana@laptop")
    registry = Registry(models_dir, max_instances=100, warm_up=scores_typical_row)
    seen = traffic_events(registry)
    registry.load()
    assert seen == [
        ("breast-cancer", None, ("none", 0.0)),
        ("diabetes", None, ("none", 0.0)),
        ("iris", None, ("shadow", 100.0)),
    ]
    iris = registry.entry("iris").state
    assert sorted(iris.loaded) == [1, 2]
    assert iris.challenger is iris.loaded[2]
    assert (iris.traffic.mode, iris.traffic.percent, iris.traffic.by) == (
        "shadow",
        100.0,
        "ana@laptop",
    )
    status = registry.entry("iris").traffic_status()
    assert (status.mode, status.percent, status.active, status.inactive_reason) == (
        "shadow",
        100.0,
        True,
        None,
    )
    assert registry.entry("iris").detail().traffic == status
    assert registry.entry("iris").summary().traffic == "shadow"
    diabetes = registry.entry("diabetes").state
    assert sorted(diabetes.loaded) == [1]
    assert diabetes.challenger is None
    assert registry.entry("diabetes").traffic_status().inactive_reason is None  # mode none


@pytest.mark.parametrize("breakage", ["warmup_failed", "checksum_mismatch"])
def test_a_refused_candidate_leaves_production_serving_alone(
    models_dir: Path, breakage: str
) -> None:
    """Warmed up even at start-up (production is not): a candidate that cannot score its
    typical row is refused, and the model is not degraded for it."""
    if breakage == "warmup_failed":
        candidate = save_broken_iris(models_dir)
    else:
        candidate = save_version(
            models_dir,
            read_metadata(models_dir, "iris", 1),
            load_estimator(models_dir, read_metadata(models_dir, "iris", 1)),
        ).version
        tamper(models_dir, "iris", candidate)
    set_alias(models_dir, "iris", "candidate", candidate)
    lifecycle.set_traffic(models_dir, "iris", "shadow", 10)
    registry = Registry(models_dir, max_instances=100, warm_up=scores_typical_row)
    registry.load()
    state = registry.entry("iris").state
    assert registry.production()["iris"].version == 1
    assert registry.refused() == {}  # production serves: not a refused model
    assert state.refusals[candidate].reason == breakage
    assert state.challenger is None
    status = registry.entry("iris").traffic_status()
    assert (status.mode, status.active) == ("shadow", False)
    assert status.inactive_reason == f"candidate v{candidate} is refused"


def test_a_candidate_missing_from_disk_at_start_up_refuses_the_aliases_file(
    models_dir: Path,
) -> None:
    path = models_dir / "iris" / "aliases.json"
    path.write_text(
        json.dumps(
            {
                "aliases": {"production": 1, "candidate": 9},
                "history": [],
                "traffic": {"mode": "shadow", "percent": 50, "candidate": 9},
            }
        )
    )
    registry = loaded(models_dir)
    state = registry.entry("iris").state
    assert registry.production()["iris"].version == 1
    assert state.aliases == {"production": 1}
    assert state.refusals[None].reason == "unknown_version"
    assert "candidate is v9" in state.refusals[None].message
    assert state.challenger is None
    reason = registry.entry("iris").traffic_status().inactive_reason
    assert reason == "set for candidate v9, which the candidate alias has left"


def test_the_challenger_is_the_loaded_candidate_while_the_policy_applies(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train_demo(models_dir)
    set_alias(models_dir, "iris", "candidate", 2)
    registry = loaded(models_dir)
    seen = traffic_events(registry)
    entry = registry.entry("iris")
    assert entry.state.challenger is None  # mode none
    canary = TrafficPolicy(mode="canary", percent=25, candidate=2, by="ana@laptop")
    with caplog.at_level(logging.INFO, logger="app.registry"):
        registry.set_traffic("iris", canary)
    assert "iris: traffic canary 25% (was none 0%; by ana@laptop)" in caplog.text
    assert seen == [("iris", ("none", 0.0), ("canary", 25.0))]
    assert entry.state.traffic == canary
    assert entry.state.challenger is None  # the candidate is not in memory yet
    assert entry.traffic_status().inactive_reason == "candidate not loaded"
    registry.resolve("iris", "candidate")
    assert entry.state.challenger is entry.state.loaded[2]
    assert entry.traffic_status().active
    registry.set_traffic("iris", canary)  # the same policy: nothing fired
    assert len(seen) == 1

    registry.point("iris", "production", 2)  # production onto the candidate
    assert entry.state.challenger is None
    assert entry.traffic_status().inactive_reason == "candidate is the production version"
    registry.point("iris", "production", 1)
    assert entry.state.challenger is entry.state.loaded[2]
    registry.point("iris", "candidate", 1)  # the alias leaves the version the policy is for
    assert entry.state.challenger is None
    reason = entry.traffic_status().inactive_reason
    assert reason == "set for candidate v2, which the candidate alias has left"
    registry.unset("iris", "candidate")
    assert entry.state.challenger is None
    assert entry.state.traffic == canary  # in memory until the file says otherwise
    with pytest.raises(UnknownModel):
        registry.set_traffic("nope", canary)
