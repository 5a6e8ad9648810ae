"""The registry: what loads, what is refused and why, how requests resolve."""

import json
from pathlib import Path

import pytest

from app.artifacts import ARTIFACT, METADATA, set_alias
from app.errors import ModelUnavailable, UnknownModel, UnknownVersion
from app.loading import LoadedModel
from app.registry import ModelEntry, Registry
from app.training import train_demo


def loaded(models_dir: Path) -> Registry:
    registry = Registry(models_dir, max_instances=100)
    registry.load()
    return registry


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
