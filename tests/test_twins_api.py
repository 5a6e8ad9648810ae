"""Compiled twins through the HTTP API: /predict answers what scikit-learn answers; every reason
a version serves on scikit-learn instead is in GET /models/{model} and steward_model_runtime,
and the version keeps serving; rows outside the training range and hostile values go to
scikit-learn and its refusals, never to a 5xx."""

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from helpers import (
    ADMIN_AUTH,
    ADMIN_TOKEN,
    DIABETES_ROW,
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    assert_error,
    churn_frame,
    metric,
    predict,
)
from prometheus_client.parser import text_string_to_metric_families
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from app.artifacts import METADATA, load_estimator, read_metadata, save_version, sha256_bytes
from app.compiling import compile_version
from app.loading import load_version
from app.main import create_app
from app.prediction import infer
from app.registration import register_estimator
from app.settings import Settings
from app.training import train_csv
from app.training_rows import stored_held_out_matrix
from app.twins import PROBABILITY_TOLERANCE

IRIS_MIDDLE = {
    "sepal_length_cm": 6.0,
    "sepal_width_cm": 2.7,
    "petal_length_cm": 4.9,
    "petal_width_cm": 1.6,
}


def runtime_series(client: TestClient, model: str, version: str) -> dict[tuple[str, str], float]:
    """Every steward_model_runtime sample of this version: (runtime, fallback) -> value."""
    series = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "steward_model_runtime" and (
                labels["model"],
                labels["version"],
            ) == (model, version):
                series[(labels["runtime"], labels["fallback"])] = sample.value
    return series


def loaded(client: TestClient, model: str, version: int = 1) -> dict[str, Any]:
    response = client.get(f"/models/{model}")
    assert response.status_code == 200, response.text
    (entry,) = [v for v in response.json()["loaded"] if v["version"] == version]
    return entry  # type: ignore[no-any-return]


def sklearn_answers(root: Path, model: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The estimator's own answers to ``rows``, from its artifact, as /predict would give them."""
    metadata = read_metadata(root, model, 1)
    estimator = load_estimator(root, metadata)
    names = [f.name for f in metadata.features]
    matrix = metadata.contract().matrix([tuple(row[n] for n in names) for row in rows])
    if metadata.has_proba:
        keys = [str(c) for c in metadata.classes or ()]
        return [
            {
                "prediction": (metadata.classes or [])[int(np.argmax(p))],
                "probabilities": dict(zip(keys, p.tolist(), strict=True)),
            }
            for p in estimator.predict_proba(matrix)
        ]
    return [{"prediction": v} for v in estimator.predict(matrix).tolist()]


def answers(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [{k: v for k, v in p.items() if k != "id"} for p in response.json()["predictions"]]


def assert_close(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Identical labels, probabilities within the documented tolerance."""
    assert [p["prediction"] for p in got] == [p["prediction"] for p in expected]
    for ours, theirs in zip(got, expected, strict=True):
        assert ours["probabilities"].keys() == theirs["probabilities"].keys()
        for key, value in ours["probabilities"].items():
            assert abs(value - theirs["probabilities"][key]) <= PROBABILITY_TOLERANCE


def assert_healthy(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            assert math.isfinite(sample.value), sample


# --- a CSV-trained pipeline with categories ---------------------------------------------------


def test_a_csv_pipeline_with_categories_answers_as_scikit_learn_through_predict(
    tmp_path: Path,
) -> None:
    csv = tmp_path / "churn.csv"
    churn_frame().to_csv(csv, index=False)
    root = tmp_path / "models"
    metadata = train_csv(root, csv, "churned", "churn")
    assert metadata.compilation is not None
    assert metadata.compilation.twin is not None
    assert metadata.compilation.twin.sklearn_steps == 1
    held_out, _ = stored_held_out_matrix(root, metadata)
    names = [f.name for f in metadata.features]
    assert names == ["plan", "months", "spend"]
    rows = [
        {
            "plan": plan,
            "months": None if math.isnan(months) else int(months),
            "spend": None if math.isnan(spend) else float(spend),
        }
        for plan, months, spend in held_out.tolist()
    ]
    rows += [
        {"plan": "enterprise", "months": 5, "spend": 40.0},  # never seen in training
        {"plan": None, "months": 5, "spend": 40.0},
        {"plan": "basic", "months": None, "spend": 40.0},
        {"plan": "basic", "months": 5, "spend": None},
        {"plan": None, "months": None, "spend": None},
    ]
    settings = Settings(models_dir=root, data_dir=tmp_path / "data")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        entry = loaded(client, "churn")
        assert (entry["runtime"], entry["fallback"]) == ("onnxruntime", None)
        assert runtime_series(client, "churn", "1") == {("onnxruntime", "none"): 1.0}
        detail = client.get("/models/churn").json()["versions"][0]["compilation"]
        assert detail["twin"]["sklearn_steps"] == 1
        assert detail["twin"]["sha256"] == metadata.compilation.twin.sha256
        got = answers(predict(client, "churn", *rows))
    assert_close(got, sklearn_answers(root, "churn", rows))
    # and exactly what the twin itself answers (the core path, twin on)
    model = load_version(
        root, "churn", 1, max_instances=1000, input_range_multiple=10, target_range_multiple=10
    )
    assert model.twin is not None
    core = infer(model, [tuple(row[n] for n in names) for row in rows])
    assert [(p["prediction"], p["probabilities"]) for p in got] == core


# --- fallbacks --------------------------------------------------------------------------------


def _register_iris_lookalike(root: Path, folder: Path) -> None:
    """Another iris model (another estimator, same four float inputs): its own twin."""
    x, y = load_iris(return_X_y=True)
    artifact, sample = folder / "other.joblib", folder / "other.csv"
    joblib.dump(LogisticRegression(C=0.01, max_iter=1000).fit(x, y), artifact)
    pd.DataFrame(x, columns=list(IRIS_SETOSA)).to_csv(sample, index=False)
    other = register_estimator(root, artifact, "other", sample)
    assert other.compilation is not None
    assert other.compilation.twin is not None


def _rewrite_metadata(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = root / "iris" / "1" / METADATA
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _tamper(root: Path, _: Path) -> None:
    twin = root / "iris" / "1" / "twin.onnx"
    data = bytearray(twin.read_bytes())
    data[len(data) // 2] ^= 0x01
    twin.write_bytes(bytes(data))


def _remove(root: Path, _: Path) -> None:
    (root / "iris" / "1" / "twin.onnx").unlink()


def _swap(root: Path, folder: Path) -> None:
    """iris v1's twin replaced by another model's, the metadata's sha256 updated to match: only
    the proof at load time can tell."""
    _register_iris_lookalike(root, folder)
    other = (root / "other" / "1" / "twin.onnx").read_bytes()
    (root / "iris" / "1" / "twin.onnx").write_bytes(other)

    def point_at_it(data: dict[str, Any]) -> None:
        data["compilation"]["twin"]["sha256"] = sha256_bytes(other)

    _rewrite_metadata(root, point_at_it)


def _garble(root: Path, _: Path) -> None:
    """Bytes no runtime reads, the metadata's sha256 updated to match."""
    garbage = b"not an onnx model"
    (root / "iris" / "1" / "twin.onnx").write_bytes(garbage)

    def point_at_it(data: dict[str, Any]) -> None:
        data["compilation"]["twin"]["sha256"] = sha256_bytes(garbage)

    _rewrite_metadata(root, point_at_it)


def _uncompile(root: Path, _: Path) -> None:
    _rewrite_metadata(root, lambda data: data.pop("compilation"))  # as saved before twins


FALLBACKS: list[tuple[str, Callable[[Path, Path], None], str]] = [
    ("checksum_mismatch", _tamper, "twin.onnx"),
    ("twin_unreadable", _remove, "twin.onnx"),
    ("twin_unreadable", _garble, "twin.onnx"),
    ("twin_differs", _swap, "on the reference sample"),
    ("not_compiled", _uncompile, "steward compile"),
]


@pytest.mark.parametrize(
    ("reason", "spoil", "said"),
    FALLBACKS,
    ids=["tampered", "missing", "garbled", "swapped", "uncompiled"],
)
def test_a_spoilt_or_missing_twin_falls_back_to_scikit_learn_visibly_and_keeps_serving(
    tmp_path: Path,
    models_dir: Path,
    reason: str,
    spoil: Callable[[Path, Path], None],
    said: str,
) -> None:
    spoil(models_dir, tmp_path)
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data")
    rows = [IRIS_SETOSA, IRIS_MIDDLE, IRIS_VIRGINICA]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        entry = loaded(client, "iris")
        assert entry["runtime"] == "sklearn"
        assert entry["fallback"]["reason"] == reason
        assert said in entry["fallback"]["message"]
        assert runtime_series(client, "iris", "1") == {("sklearn", reason): 1.0}
        assert answers(predict(client, "iris", *rows)) == sklearn_answers(models_dir, "iris", rows)
        # the other models keep their twins
        assert loaded(client, "diabetes")["runtime"] == "onnxruntime"
        assert runtime_series(client, "diabetes", "1") == {("onnxruntime", "none"): 1.0}
        assert_healthy(client)


def test_twins_off_serves_every_version_on_scikit_learn(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEWARD_TWINS", "false")
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data")
    assert settings.twins is False
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for model in ("iris", "breast-cancer", "diabetes"):
            entry = loaded(client, model)
            assert entry["runtime"] == "sklearn"
            assert entry["fallback"]["reason"] == "twins_off"
            assert runtime_series(client, model, "1") == {("sklearn", "twins_off"): 1.0}
        rows = [IRIS_SETOSA, IRIS_MIDDLE, IRIS_VIRGINICA]
        assert answers(predict(client, "iris", *rows)) == sklearn_answers(models_dir, "iris", rows)
        diabetes = answers(predict(client, "diabetes", DIABETES_ROW))
        assert diabetes == sklearn_answers(models_dir, "diabetes", [DIABETES_ROW])


def test_an_estimator_no_converter_takes_serves_on_scikit_learn_with_the_reason(
    tmp_path: Path, models_dir: Path
) -> None:
    x = np.column_stack([np.linspace(0, 1, 30), np.linspace(0, 1, 30) ** 2])
    artifact, sample = tmp_path / "kernel.joblib", tmp_path / "kernel.csv"
    joblib.dump(KernelRidge(alpha=0.1).fit(x, 3 * x[:, 0] - x[:, 1]), artifact)
    pd.DataFrame(x, columns=["a", "b"]).to_csv(sample, index=False)
    metadata = register_estimator(models_dir, artifact, "kernel", sample)
    assert metadata.compilation is not None
    assert (metadata.compilation.twin, metadata.compilation.reason) == (None, "unsupported")
    assert "KernelRidge" in metadata.compilation.message
    assert sorted(p.name for p in (models_dir / "kernel" / "1").iterdir()) == [
        METADATA, "model.joblib"
    ]  # fmt: skip
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data")
    rows = [{"a": 0.25, "b": 0.0625}, {"a": 0.9, "b": 0.5}]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        entry = loaded(client, "kernel")
        assert entry["runtime"] == "sklearn"
        assert entry["fallback"] == {
            "reason": "unsupported",
            "message": metadata.compilation.message,
        }
        assert runtime_series(client, "kernel", "1") == {("sklearn", "unsupported"): 1.0}
        detail = client.get("/models/kernel").json()["versions"][0]["compilation"]
        assert (detail["twin"], detail["reason"]) == (None, "unsupported")
        got = answers(predict(client, "kernel", *rows))
    assert got == sklearn_answers(models_dir, "kernel", rows)


# --- rows outside the training range, hostile values ------------------------------------------


@pytest.fixture
def forest(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    """A random forest behind a one-hot encoder, registered (a named DataFrame), served with
    the range policy off: a treelite twin rounding to float32, and any finite value reaches it."""
    frame = churn_frame(200)
    labels = frame.pop("churned")
    encode = ColumnTransformer(
        [("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"])], remainder="passthrough"
    )
    estimator = Pipeline(
        [("prepare", encode), ("model", RandomForestClassifier(10, random_state=0))]
    )
    estimator.fit(frame[:120], labels[:120])
    artifact, sample = tmp_path / "forest.joblib", tmp_path / "forest.csv"
    joblib.dump(estimator, artifact)
    frame[120:].to_csv(sample, index=False)
    root = tmp_path / "models"
    metadata = register_estimator(root, artifact, "forest", sample)
    assert metadata.compilation is not None
    assert metadata.compilation.twin is not None
    twin = metadata.compilation.twin
    assert (twin.runtime, twin.precision, twin.sklearn_steps) == ("treelite", "float32", 1)
    settings = Settings(models_dir=root, data_dir=tmp_path / "data", input_range_multiple=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert loaded(client, "forest")["runtime"] == "treelite"
        yield client, root


TYPICAL = {"plan": "pro", "months": 20, "spend": 50.0}


@pytest.mark.parametrize(
    "row",
    [
        {"spend": 3e38},  # far outside the training range, inside float32's
        {"spend": -3e38},
        {"months": -(2**63)},
        {"months": 2**63 - 1},
        {"months": 0, "spend": 0.0},  # just outside
        {"months": None},
        {"spend": None},
        {"plan": "enterprise"},  # unseen
        {"plan": "enterprise", "months": None, "spend": 1e30},
    ],
)
def test_a_float32_forest_answers_extremes_nulls_and_unseen_categories_as_scikit_learn(
    forest: tuple[TestClient, Path], row: dict[str, Any]
) -> None:
    client, root = forest
    instance = TYPICAL | row
    got = answers(predict(client, "forest", instance, TYPICAL))
    assert got == sklearn_answers(root, "forest", [instance, TYPICAL])  # trees: exactly
    assert_healthy(client)


@pytest.mark.parametrize(
    ("row", "status", "code"),
    [
        ({"spend": "X"}, 422, "unscorable_input"),  # literal 1e308: float32 cannot hold it
        ({"spend": "-X"}, 422, "unscorable_input"),
        ({"months": "X"}, 422, "validation_error"),  # literal 2**70: no int64
        ({"plan": None}, 422, "validation_error"),  # the encoder takes no missing plan
    ],
    ids=["1e308", "-1e308", "2^70", "null-plan"],
)
def test_what_a_float32_forest_cannot_take_is_422_never_5xx_nor_echoed(
    forest: tuple[TestClient, Path], row: dict[str, Any], status: int, code: str
) -> None:
    client, _ = forest
    literal = "1e308" if "spend" in row else str(2**70)
    body = json.dumps({"instances": [TYPICAL | row]}).replace('"X"', literal)
    body = body.replace('"-X"', "-" + literal)
    error = assert_error(client.post("/predict/forest", content=body), status, code)
    assert literal[:6] not in json.dumps(error)
    field = next(iter(row))
    assert error["details"][0]["field"] == f"instances.0.{field}"
    stage = "unscorable" if code == "unscorable_input" else "validation"
    assert metric(client, "steward_errors_total", model="forest", stage=stage) == 1
    assert metric(client, "steward_errors_total", model="forest", stage="model") == 0
    assert_healthy(client)
    assert answers(predict(client, "forest", TYPICAL))


def test_iris_rows_outside_the_training_range_get_scikit_learns_exact_answer(
    client: TestClient, models_dir: Path
) -> None:
    """Inside the range policy, outside the training range: the twin was not proven there."""
    rows = [
        IRIS_SETOSA | {"petal_length_cm": 7.5},  # training max 6.9
        IRIS_VIRGINICA | {"sepal_width_cm": 0.5},
    ]
    assert loaded(client, "iris")["runtime"] == "onnxruntime"
    assert answers(predict(client, "iris", *rows)) == sklearn_answers(models_dir, "iris", rows)


def test_each_loaded_version_has_its_one_runtime_series_until_it_leaves(
    tmp_path: Path, models_dir: Path
) -> None:
    """v1 (its twin spoilt) and v2 (its twin proven) side by side, then v1 rolled off."""
    _tamper(models_dir, tmp_path)
    v1 = read_metadata(models_dir, "iris", 1)
    draft = v1.model_copy(update={"compilation": None})
    v2 = save_version(models_dir, draft, load_estimator(models_dir, v1))
    assert compile_version(models_dir, "iris", v2.version).compilation.twin is not None  # type: ignore[union-attr]
    settings = Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "data",
        admin_token=ADMIN_TOKEN,
        reload_interval_seconds=0,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert runtime_series(client, "iris", "1") == {("sklearn", "checksum_mismatch"): 1.0}
        assert runtime_series(client, "iris", "2") == {}  # not loaded
        promoted = client.post(
            "/admin/models/iris/promote", json={"version": 2}, headers=ADMIN_AUTH
        )
        assert promoted.status_code == 200, promoted.text
        assert runtime_series(client, "iris", "2") == {("onnxruntime", "none"): 1.0}
        assert [v["version"] for v in client.get("/models/iris").json()["loaded"]] == [2]
        assert runtime_series(client, "iris", "1") == {}  # v1 unloaded: its series removed
        answer = predict(client, "iris", IRIS_SETOSA).json()
        assert answer["version"] == 2
