"""`steward compile` on a version a server is serving: the next rescan loads it again, and its
twin serves without a restart; the rest of the registry is left alone."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import ADMIN_AUTH, IRIS_SETOSA, metric, predict, run_cli

from app.artifacts import METADATA, read_metadata, write_atomically


def _forget_compilation(models_dir: Path, name: str, version: int) -> None:
    """The version as a Steward without twins saved it: no compilation, no twin file."""
    folder = models_dir / name / str(version)
    metadata = read_metadata(models_dir, name, version)
    write_atomically(
        folder / METADATA,
        metadata.model_copy(update={"compilation": None}).model_dump_json(indent=2),
    )
    (folder / "twin.onnx").unlink()


def _runtime(admin: TestClient, name: str) -> tuple[str, str | None]:
    (loaded,) = admin.get(f"/models/{name}").json()["loaded"]
    return loaded["runtime"], loaded["fallback"] and loaded["fallback"]["reason"]


@pytest.fixture
def uncompiled(models_dir: Path) -> Path:
    _forget_compilation(models_dir, "iris", 1)
    return models_dir


def test_a_version_compiled_while_served_is_loaded_again_with_its_twin(
    uncompiled: Path, admin: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _runtime(admin, "iris") == ("sklearn", "not_compiled")
    before = predict(admin, "iris", IRIS_SETOSA).json()
    not_compiled = {"model": "iris", "version": "1", "runtime": "sklearn"}
    assert metric(admin, "steward_model_runtime", **not_compiled, fallback="not_compiled") == 1

    code, out, _ = run_cli(capsys, "--models-dir", str(uncompiled), "compile", "iris")
    assert code == 0
    assert "twin: onnxruntime" in out
    assert "(demo)" in out  # held-out rows rebuilt from scikit-learn's bundled dataset

    report = admin.post("/admin/reload", headers=ADMIN_AUTH).json()
    assert report["recompiled"] == {"iris": [1]}
    assert _runtime(admin, "iris") == ("onnxruntime", None)
    twin = {"model": "iris", "version": "1", "runtime": "onnxruntime", "fallback": "none"}
    assert metric(admin, "steward_model_runtime", **twin) == 1
    assert 'fallback="not_compiled"' not in admin.get("/metrics").text
    after = predict(admin, "iris", IRIS_SETOSA).json()
    assert after["predictions"][0]["prediction"] == before["predictions"][0]["prediction"]
    probabilities = after["predictions"][0]["probabilities"]
    for name, value in before["predictions"][0]["probabilities"].items():
        assert abs(probabilities[name] - value) <= 1e-6
    assert metric(admin, "steward_predictions_total", model="iris", version="1") == 2

    # Nothing changed since: the next rescan loads nothing again.
    assert admin.post("/admin/reload", headers=ADMIN_AUTH).json()["recompiled"] == {}


def test_a_metadata_file_touched_without_a_new_compilation_is_not_reloaded(
    admin: TestClient, models_dir: Path
) -> None:
    path = models_dir / "iris" / "1" / METADATA
    write_atomically(path, path.read_bytes())  # a new modification time, the same content
    assert admin.post("/admin/reload", headers=ADMIN_AUTH).json()["recompiled"] == {}
    assert _runtime(admin, "iris") == ("onnxruntime", None)
