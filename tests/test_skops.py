"""Safe artifacts: skops versions (trained, registered, converted) serve the answers their joblib
twins give; a skops file needing an untrusted type, a tampered one, and with
STEWARD_ALLOW_PICKLE=false every joblib version, are refused with their reason while the rest
serve."""

import hashlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import joblib
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import (
    DIABETES_ROW,
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    assert_error,
    assert_one_line_error,
    run_cli,
    write_labelled,
)
from prometheus_client.parser import text_string_to_metric_families
from server import STEWARD, free_port, serving
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression

from app.aliases import read_aliases
from app.artifact_formats import FILES, ArtifactFormat, ArtifactPolicy, PickleRefused
from app.artifacts import (
    ARTIFACT,
    METADATA,
    list_versions,
    load_estimator,
    read_metadata,
    save_version,
    sha256_bytes,
)
from app.errors import InvalidSettings
from app.main import create_app
from app.registration import register_estimator
from app.retraining import retrain
from app.services import Services
from app.settings import Settings, load_settings
from app.store import open_store

SKOPS = FILES["skops"]
IRIS_ROWS = [
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    {"sepal_length_cm": 6.0, "sepal_width_cm": 2.7, "petal_length_cm": 4.2, "petal_width_cm": 1.3},
    {"sepal_length_cm": 6.3, "sepal_width_cm": 2.8, "petal_length_cm": 5.0, "petal_width_cm": 1.6},
]


class Flipped(LogisticRegression):  # type: ignore[misc]
    """A custom class: no allowlist trusts it, whatever it holds."""


def folder_digests(root: Path, name: str, version: int) -> dict[str, str]:
    folder = root / name / str(version)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def answers(client: TestClient, model: str, version: int, rows: list[dict[str, Any]]) -> Any:
    response = client.post(f"/predict/{model}?version={version}", json={"instances": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == version
    return [(p["prediction"], p.get("probabilities")) for p in body["predictions"]]


def refusals(client: TestClient, model: str) -> list[tuple[int, str]]:
    return [(r["version"], r["reason"]) for r in client.get(f"/models/{model}").json()["refusals"]]


def refused_metric(client: TestClient, model: str, reason: str) -> float | None:
    services: Services = client.app_state["services"]
    labels = {"model": model, "reason": reason}
    return services.metrics.registry.get_sample_value("steward_model_refused", labels)


def test_train_demo_as_skops_writes_skops_and_answers_as_the_joblib_version(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys, "--models-dir", str(models_dir), "train", "demo", "--format", "skops"
    )
    assert (code, err) == (0, ""), err
    assert "iris: version 2 " in out
    for model in ("iris", "breast-cancer", "diabetes"):
        metadata = read_metadata(models_dir, model, 2)
        assert metadata.artifact_format == "skops"
        folder = models_dir / model / "2"
        assert not (folder / ARTIFACT).exists()
        assert sha256_bytes((folder / SKOPS).read_bytes()) == metadata.sha256
        assert read_aliases(models_dir, model)["production"] == 1  # not promoted

    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        assert answers(client, "iris", 2, IRIS_ROWS) == answers(client, "iris", 1, IRIS_ROWS)
        assert answers(client, "diabetes", 2, [DIABETES_ROW]) == answers(
            client, "diabetes", 1, [DIABETES_ROW]
        )
        assert refusals(client, "iris") == []
        v2 = next(v for v in client.get("/models/iris").json()["versions"] if v["version"] == 2)
        assert v2["artifact_format"] == "skops"


def test_with_pickle_refused_joblib_versions_are_refused_and_skops_ones_serve(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """iris is converted and promoted (v2, skops); breast-cancer and diabetes stay joblib."""
    code, _, err = run_cli(
        capsys, "--models-dir", str(models_dir), "convert", "iris", "1", "--format", "skops",
        "--promote",
    )  # fmt: skip
    assert (code, err) == (0, "")
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data", allow_pickle=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = client.get("/readyz").json()
        assert body["status"] == "degraded"
        assert body["models"] == {"iris": 2}
        degraded = {p["component"]: p for p in body["degraded"]}
        assert {c: p["reason"] for c, p in degraded.items()} == {
            "model:breast-cancer": "pickle_refused",
            "model:diabetes": "pickle_refused",
        }
        assert "STEWARD_ALLOW_PICKLE=false" in degraded["model:diabetes"]["message"]
        assert "steward convert diabetes 1 --format skops" in degraded["model:diabetes"]["message"]
        assert refused_metric(client, "diabetes", "pickle_refused") == 1
        assert refused_metric(client, "iris", "pickle_refused") is None

        response = client.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
        assert response.status_code == 200, response.text
        assert response.json()["version"] == 2
        response = client.post("/predict/iris?version=1", json={"instances": [IRIS_SETOSA]})
        body = assert_error(response, 503, "model_unavailable")
        assert body["details"] == [{"reason": "pickle_refused"}]
        assert refusals(client, "iris") == [(1, "pickle_refused")]
        assert refused_metric(client, "iris", "pickle_refused") == 1
        response = client.post("/predict/diabetes", json={"instances": [DIABETES_ROW]})
        assert_error(response, 503, "model_unavailable")


def test_a_real_server_with_pickle_refused_serves_skops_and_names_each_joblib_refusal(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`steward serve` with STEWARD_ALLOW_PICKLE=false in its environment: iris converted and
    promoted serves, the two joblib models are refused (readiness, metric), none unpickled."""
    code, _, err = run_cli(
        capsys, "--models-dir", str(models_dir), "convert", "iris", "1", "--format", "skops",
        "--promote",
    )  # fmt: skip
    assert (code, err) == (0, "")
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models_dir),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
        "STEWARD_ALLOW_PICKLE": "false",
    }
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    with serving(argv, port=port, env=env, log=tmp_path / "server.log", ready="/readyz") as served:
        ready = httpx2.get(f"{served.url}/readyz").json()
        assert ready["models"] == {"iris": 2}
        reasons = {p["component"]: p["reason"] for p in ready["degraded"]}
        assert reasons == {
            "model:breast-cancer": "pickle_refused",
            "model:diabetes": "pickle_refused",
        }
        response = httpx2.post(f"{served.url}/predict/iris", json={"instances": [IRIS_SETOSA]})
        assert (response.status_code, response.json()["version"]) == (200, 2)
        text = httpx2.get(f"{served.url}/metrics").text
    refused = {
        (s.labels["model"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "steward_model_refused"
        for s in family.samples
    }
    assert refused == {("breast-cancer", "pickle_refused"): 1, ("diabetes", "pickle_refused"): 1}


def test_the_cli_writes_skops_when_pickle_is_refused_and_refuses_an_explicit_joblib(
    models_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEWARD_ALLOW_PICKLE", "false")
    before = sorted(p.name for p in (models_dir / "iris").iterdir())
    code, out, err = run_cli(
        capsys, "--models-dir", str(models_dir), "train", "demo", "--format", "joblib"
    )
    assert (code, out) == (2, "")
    assert_one_line_error(err, "--format joblib", "STEWARD_ALLOW_PICKLE=false", "--format skops")
    assert sorted(p.name for p in (models_dir / "iris").iterdir()) == before

    code, out, err = run_cli(capsys, "--models-dir", str(models_dir), "train", "demo")
    assert (code, err) == (0, "")
    assert read_metadata(models_dir, "iris", 2).artifact_format == "skops"
    code, out, err = run_cli(
        capsys, "--models-dir", str(models_dir), "convert", "iris", "2", "--format", "joblib"
    )
    assert code == 1
    assert_one_line_error(err, "iris v2", "STEWARD_ALLOW_PICKLE=false")
    assert not (models_dir / "iris" / "3").exists()


def test_convert_writes_a_new_skops_version_with_the_same_answers_and_leaves_the_source(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = read_metadata(models_dir, "iris", 1)
    untouched = folder_digests(models_dir, "iris", 1)
    code, out, err = run_cli(
        capsys, "--models-dir", str(models_dir), "convert", "iris", "1", "--format", "skops"
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith("iris: version 2 accuracy=")
    assert "converted from version 1 to skops: the same answers" in out
    assert folder_digests(models_dir, "iris", 1) == untouched
    assert read_aliases(models_dir, "iris")["production"] == 1

    converted = read_metadata(models_dir, "iris", 2)
    assert (converted.artifact_format, converted.converted_from) == ("skops", 1)
    same = ("features", "classes", "metrics", "reference_profile", "training_data", "compilation")
    for field in same:
        assert getattr(converted, field) == getattr(source, field), field
    assert sorted(folder_digests(models_dir, "iris", 2)) == [METADATA, SKOPS, "twin.onnx"]

    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        assert answers(client, "iris", 2, IRIS_ROWS) == answers(client, "iris", 1, IRIS_ROWS)
        loaded = {v["version"]: v for v in client.get("/models/iris").json()["loaded"]}
        assert loaded[2]["runtime"] == loaded[1]["runtime"] == "onnxruntime"
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data2", twins=False)
    with TestClient(create_app(settings)) as client:  # the estimators themselves, not the twin
        assert answers(client, "iris", 2, IRIS_ROWS) == answers(client, "iris", 1, IRIS_ROWS)

    code, out, err = run_cli(
        capsys, "--models-dir", str(models_dir), "convert", "iris", "2", "--format", "skops"
    )
    assert (code, out) == (1, "")
    assert_one_line_error(err, "iris v2 is already stored as skops")
    code, out, err = run_cli(
        capsys, "--models-dir", str(models_dir), "convert", "iris", "9", "--format", "skops"
    )
    assert (code, out) == (1, "")
    assert_one_line_error(err, "iris has no version 9 (versions: 1, 2)")
    code, out, err = run_cli(
        capsys, "--models-dir", str(models_dir), "convert", "iris", "1", "--format", "onnx"
    )
    assert (code, out) == (2, "")
    assert_one_line_error(err, "--format", "skops")
    assert not (models_dir / "iris" / "3").exists()


def _iris_sample(tmp_path: Path) -> tuple[Path, pd.DataFrame, Any]:
    data = load_iris(as_frame=True)
    frame = data.data.set_axis(list(IRIS_SETOSA), axis=1)
    sample = tmp_path / "sample.csv"
    frame.to_csv(sample, index=False)
    return sample, frame, data.target.to_numpy()


def test_a_skops_version_needing_an_untrusted_type_is_refused_until_the_server_trusts_it(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A random forest holds sklearn.tree._tree.Tree, which skops and Steward do not trust by
    default; the operator's setting, not the file, decides."""
    sample, frame, labels = _iris_sample(tmp_path)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(frame.to_numpy(), labels)
    artifact = tmp_path / "forest.joblib"
    joblib.dump(forest, artifact)
    code, out, err = run_cli(
        capsys, "--models-dir", str(models_dir), "register", str(artifact), "--name", "forest",
        "--sample", str(sample), "--format", "skops",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == (
        "  note: a server refuses this version (untrusted_types) unless "
        "STEWARD_SKOPS_TRUSTED_TYPES includes sklearn.tree._tree.Tree"
    )
    assert read_metadata(models_dir, "forest", 1).artifact_format == "skops"
    # The same forest registered as joblib (v2) and converted (v3): written, with the same note.
    code, _, err = run_cli(
        capsys, "--models-dir", str(models_dir), "register", str(artifact), "--name", "forest",
        "--sample", str(sample),
    )  # fmt: skip
    assert (code, err) == (0, "")
    code, out, err = run_cli(
        capsys, "--models-dir", str(models_dir), "convert", "forest", "2", "--format", "skops"
    )
    assert (code, err) == (0, "")
    assert "STEWARD_SKOPS_TRUSTED_TYPES includes sklearn.tree._tree.Tree" in out.splitlines()[-1]
    assert read_metadata(models_dir, "forest", 3).converted_from == 2

    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data", twins=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = client.get("/readyz").json()
        assert body["models"] == {"breast-cancer": 1, "diabetes": 1, "iris": 1}
        [problem] = body["degraded"]
        assert (problem["component"], problem["reason"]) == ("model:forest", "untrusted_types")
        assert "sklearn.tree._tree.Tree" in problem["message"]
        assert "STEWARD_SKOPS_TRUSTED_TYPES" in problem["message"]
        assert refused_metric(client, "forest", "untrusted_types") == 1
        response = client.post("/predict/forest", json={"instances": [IRIS_SETOSA]})
        assert_error(response, 503, "model_unavailable")
        assert client.post("/predict/iris", json={"instances": [IRIS_SETOSA]}).status_code == 200

    trusted = Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "data",
        twins=False,
        skops_trusted_types=["sklearn.tree._tree.Tree"],
    )
    with TestClient(create_app(trusted)) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        served = answers(client, "forest", 1, IRIS_ROWS)
        assert answers(client, "forest", 3, IRIS_ROWS) == served
        assert answers(client, "forest", 2, IRIS_ROWS) == served
    expected = forest.predict(pd.DataFrame(IRIS_ROWS).to_numpy())
    assert [label for label, _ in served] == expected.tolist()


def test_a_custom_class_in_a_skops_artifact_is_refused_by_name_and_never_built(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample, frame, labels = _iris_sample(tmp_path)
    estimator = Flipped(max_iter=1000).fit(frame.to_numpy(), labels)
    draft = read_metadata(models_dir, "iris", 1).model_copy(
        update={"artifact_format": "skops", "compilation": None}
    )
    saved = save_version(models_dir, draft, estimator)
    type_name = f"{Flipped.__module__}.Flipped"

    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post(
            f"/predict/iris?version={saved.version}", json={"instances": [IRIS_SETOSA]}
        )
        body = assert_error(response, 503, "model_unavailable")
        assert body["details"] == [{"reason": "untrusted_types"}]
        assert type_name in body["message"]
        assert refusals(client, "iris") == [(saved.version, "untrusted_types")]
        assert client.post("/predict/iris", json={"instances": [IRIS_SETOSA]}).status_code == 200

    # The same file given to `steward register`: refused in one line, nothing registered.
    artifact = tmp_path / "flipped.skops"
    artifact.write_bytes((models_dir / "iris" / str(saved.version) / SKOPS).read_bytes())
    code, out, err = run_cli(
        capsys, "--models-dir", str(models_dir), "register", str(artifact), "--name", "flipped",
        "--sample", str(sample),
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert_one_line_error(err, "holds types outside the allowlist", type_name)
    assert not (models_dir / "flipped").exists()


def test_register_a_skops_file_built_from_trusted_types_stores_skops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import skops.io

    sample, frame, labels = _iris_sample(tmp_path)
    estimator = LogisticRegression(max_iter=1000).fit(frame.to_numpy(), labels)
    artifact = tmp_path / "model.skops"
    skops.io.dump(estimator, artifact)
    models = tmp_path / "models"
    code, _, err = run_cli(
        capsys, "--models-dir", str(models), "register", str(artifact), "--name", "lr",
        "--sample", str(sample),
    )  # fmt: skip
    assert (code, err) == (0, "")
    metadata = read_metadata(models, "lr", 1)
    assert metadata.artifact_format == "skops"
    loaded = load_estimator(models, metadata)
    rows = frame.to_numpy()[::10]
    assert np.array_equal(loaded.predict_proba(rows), estimator.predict_proba(rows))


def test_a_tampered_skops_artifact_is_refused_by_its_checksum_before_it_is_read(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        capsys, "--models-dir", str(models_dir), "convert", "iris", "1", "--format", "skops"
    )
    assert (code, err) == (0, "")
    path = models_dir / "iris" / "2" / SKOPS
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post("/predict/iris?version=2", json={"instances": [IRIS_SETOSA]})
        body = assert_error(response, 503, "model_unavailable")
        assert body["details"] == [{"reason": "checksum_mismatch"}]
        assert f"sha256 of {SKOPS}" in body["message"]
        assert refused_metric(client, "iris", "checksum_mismatch") == 1
        assert client.post("/predict/iris", json={"instances": [IRIS_SETOSA]}).status_code == 200


def test_skops_trusted_types_must_be_fully_qualified_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEWARD_SKOPS_TRUSTED_TYPES", "sklearn.tree._tree.Tree, Tree")
    with pytest.raises(
        InvalidSettings, match=r"STEWARD_SKOPS_TRUSTED_TYPES: not fully qualified types .*: 'Tree'$"
    ):
        load_settings()
    monkeypatch.setenv("STEWARD_SKOPS_TRUSTED_TYPES", "sklearn.tree._tree.Tree, numpy.dtype")
    assert load_settings().skops_trusted_types == ["sklearn.tree._tree.Tree", "numpy.dtype"]


def _line_model(tmp_path: Path, artifact_format: ArtifactFormat) -> tuple[Path, Any]:
    """A regressor registered from elsewhere (y = 2a), and labelled feedback saying y = 3a + b:
    enough for a retraining on feedback alone."""
    x = pd.DataFrame({"a": np.arange(20, dtype=float), "b": np.arange(20, dtype=float) % 3})
    artifact, sample = tmp_path / "model.joblib", tmp_path / "inputs.csv"
    joblib.dump(LinearRegression().fit(x, 2 * x["a"]), artifact)
    x.to_csv(sample, index=False)
    models = tmp_path / "models"
    register_estimator(models, artifact, "line", sample, artifact_format=artifact_format)
    store = open_store(f"sqlite:///{tmp_path / 'feedback.db'}")
    rows = [(timedelta(days=2, minutes=i), {"a": float(i), "b": float(i % 3)}) for i in range(12)]
    rows += [(timedelta(hours=i), {"a": 30.0 + i, "b": 1.0}) for i in range(4)]
    write_labelled(store, "line", [(t, r, 3 * r["a"] + r["b"]) for t, r in rows])
    return models, store


def test_retraining_a_skops_version_writes_skops_even_where_pickle_is_refused(
    tmp_path: Path,
) -> None:
    models, store = _line_model(tmp_path, "skops")
    try:
        settings = Settings(
            models_dir=models, data_dir=tmp_path / "data", gate_min_rows=4, allow_pickle=False
        )
        result = retrain(settings, store, "line")
    finally:
        store.close()
    new = result.version
    assert (new.version, new.artifact_format) == (2, "skops")
    files = sorted(p.name for p in (models / "line" / "2").iterdir())
    assert SKOPS in files
    assert ARTIFACT not in files
    estimator = load_estimator(models, new, ArtifactPolicy(allow_pickle=False))
    assert estimator.predict(pd.DataFrame({"a": [10.0], "b": [1.0]}))[0] == pytest.approx(31.0)


def test_retraining_a_joblib_production_where_pickle_is_refused_writes_nothing(
    tmp_path: Path,
) -> None:
    models, store = _line_model(tmp_path, "joblib")
    try:
        settings = Settings(models_dir=models, data_dir=tmp_path / "data", allow_pickle=False)
        with pytest.raises(PickleRefused, match=r"line v1: a joblib .* STEWARD_ALLOW_PICKLE=false"):
            retrain(settings, store, "line")
    finally:
        store.close()
    assert list_versions(models, "line") == [1]
