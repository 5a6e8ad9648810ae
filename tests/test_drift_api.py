"""GET /models/{model}/drift in process (the real app, its real registry and monitor): a hot
swap gives the new version its own window, a version whose reference profile is missing or
corrupt keeps serving and says `no_reference`, hostile input on the route is a 4xx in the one
error shape, and STEWARD_DRIFT=false keeps and exports nothing.

Scoring rounds are run by hand (``DriftMonitor.refresh`` through the client's portal) with the
background interval set to an hour, so each report covers exactly the rows sent before it.
"""

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from helpers import (
    ADMIN_AUTH,
    ADMIN_TOKEN,
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    assert_error,
    plan_churn_csv,
)
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.services import Services
from app.settings import Settings
from app.training import DEMOS, train_csv, train_demo
from app.training_data import demo_rows

IRIS_FEATURES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
GAUGES = (
    "steward_feature_drift_psi",
    "steward_feature_drift_ks",
    "steward_model_drift_status",
    "steward_estimated_accuracy",
    "steward_drift_window_rows",
)


def drift_settings(tmp_path: Path, models_dir: Path, **overrides: Any) -> Settings:
    """Rounds by hand only (an hour's interval), judged from 10 rows."""
    values: dict[str, Any] = {
        "models_dir": models_dir,
        "data_dir": tmp_path / "data",
        "drift_interval_seconds": 3600,
        "drift_min_rows": 10,
    }
    return Settings(**values | overrides)


@pytest.fixture
def drift_client(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(drift_settings(tmp_path, models_dir)), raise_server_exceptions=False
    ) as client:
        yield client


def scored(client: TestClient, model: str, version: str | None = None) -> dict[str, Any]:
    """Run a scoring round now, then GET the report."""
    services: Services = client.app_state["services"]
    assert client.portal is not None
    client.portal.call(services.drift.refresh)
    return drift(client, model, version)


def drift(client: TestClient, model: str, version: str | None = None) -> dict[str, Any]:
    params = {} if version is None else {"version": version}
    response = client.get(f"/models/{model}/drift", params=params)
    assert response.status_code == 200, response.text
    json.loads(response.text, parse_constant=_no_constant)  # strict JSON: no NaN, Infinity
    report: dict[str, Any] = response.json()
    return report


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} in JSON")


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
    }


def series_of(client: TestClient, model: str, version: str) -> set[str]:
    """The names of the drift gauges /metrics has for one version."""
    return {
        name
        for (name, labels), _ in samples(client).items()
        if name in GAUGES and ("model", model) in labels and ("version", version) in labels
    }


def send(client: TestClient, model: str, rows: list[dict[str, Any]], version: str = "") -> int:
    """POST the rows; the version that answered."""
    query = f"?version={version}" if version else ""
    response = client.post(f"/predict/{model}{query}", json={"instances": rows})
    assert response.status_code == 200, response.text
    answered: int = response.json()["version"]
    return answered


def no_server_errors(client: TestClient) -> None:
    statuses = {
        dict(labels).get("status")
        for (name, labels), _ in samples(client).items()
        if name == "steward_http_requests_total"
    }
    assert statuses
    assert not any(s and s.startswith("5") for s in statuses), statuses


# --- a hot swap -------------------------------------------------------------------------------


def test_a_hot_swap_gives_the_new_version_its_own_window(tmp_path: Path, models_dir: Path) -> None:
    """iris v1 serves 30 rows and v2 (asked by number) 20, each into its own window; the admin
    API promotes v2, which keeps its 20 and adds what it serves next; v1 is unloaded and its
    gauges leave /metrics; asked for again, v1 loads with an empty window."""
    train_demo(models_dir)  # version 2 of each demo; production stays 1
    settings = drift_settings(
        tmp_path, models_dir, admin_token=ADMIN_TOKEN, reload_interval_seconds=0
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert send(client, "iris", [IRIS_SETOSA] * 30) == 1
        assert send(client, "iris", [IRIS_VIRGINICA] * 20, version="2") == 2
        one, two = scored(client, "iris"), drift(client, "iris", "2")
        assert (one["version"], one["window_rows"]) == (1, 30)
        assert (two["version"], two["window_rows"]) == (2, 20)
        assert one["status"] in ("ok", "warn", "drift")  # judged: 30 rows, 10 needed
        assert [f["window_values"] for f in two["features"]] == [20] * 4
        assert series_of(client, "iris", "1") == set(GAUGES)
        assert series_of(client, "iris", "2") == set(GAUGES)

        promoted = client.post(
            "/admin/models/iris/promote", json={"version": 2}, headers=ADMIN_AUTH
        )
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["aliases"]["production"] == 2
        assert series_of(client, "iris", "1") == set()  # unloaded with the promote
        assert series_of(client, "iris", "2") == set(GAUGES)

        assert send(client, "iris", [IRIS_SETOSA] * 7) == 2
        now = scored(client, "iris")
        assert (now["version"], now["window_rows"]) == (2, 27)
        old = drift(client, "iris", "1")
        assert (old["version"], old["status"], old["window_rows"]) == (1, "collecting", 0)
        assert old["reason"]
        assert old["features"] == []
        assert series_of(client, "iris", "1") == set()

        assert send(client, "iris", [IRIS_VIRGINICA] * 5, version="1") == 1  # loads it again
        again = scored(client, "iris", "1")
        assert (again["version"], again["window_rows"]) == (1, 5)
        assert again["status"] == "collecting"  # 5 of the 10 rows needed
        assert drift(client, "iris")["window_rows"] == 27
        no_server_errors(client)


# --- a missing or corrupt reference profile ---------------------------------------------------


def _empty(profile: dict[str, Any]) -> Any:
    return {}


def _shares_off(profile: dict[str, Any]) -> Any:
    months = profile["months"]
    return profile | {"months": months | {"shares": [s * 2 for s in months["shares"]]}}


def _string(profile: dict[str, Any]) -> Any:
    months = profile["months"]
    return profile | {"months": months | {"edges": ["ten", *months["edges"][1:]]}}


def _nan(profile: dict[str, Any]) -> Any:
    months = profile["months"]
    return profile | {"months": months | {"sample": [math.nan, *months["sample"][1:]]}}


def _one_feature_left_out(profile: dict[str, Any]) -> Any:
    return {"months": profile["months"]}


def _before_bins(profile: dict[str, Any]) -> Any:
    """As versions wrote it before drift: quantiles and frequencies only."""
    return {
        name: {k: v for k, v in one.items() if k in ("probabilities", "quantiles", "frequencies")}
        for name, one in profile.items()
    }


def _not_an_object(profile: dict[str, Any]) -> Any:
    return "profile"


CORRUPTIONS = {
    "empty": _empty,
    "shares-off": _shares_off,
    "string": _string,
    "nan": _nan,
    "left-out": _one_feature_left_out,
    "before-bins": _before_bins,
    "not-an-object": _not_an_object,
}


def test_a_missing_or_corrupt_reference_says_no_reference_and_serves(tmp_path: Path) -> None:
    """CSV versions that keep no copy of their rows (nothing to rebuild a profile from), each
    with its metadata's reference profile broken one way: each loads, serves, and reports
    `no_reference` with a reason (drift status -1, no score series); the intact one is judged."""
    models = tmp_path / "models"
    csv = plan_churn_csv(tmp_path / "churn.csv")
    for name in ("intact", *CORRUPTIONS):
        metadata = train_csv(models, csv, "churned", name, copy_max_bytes=0)
        assert metadata.training_data is not None
        assert metadata.training_data.copy_sha256 is None  # no rows kept
    for name, corrupt in CORRUPTIONS.items():
        path = models / name / "1" / "metadata.json"
        written = json.loads(path.read_text())
        written["reference_profile"] = corrupt(written["reference_profile"])
        path.write_text(json.dumps(written))  # NaN written as the bare NaN JSON forbids
    rows = [{"plan": "basic", "months": m} for m in range(1, 13)]
    with TestClient(
        create_app(drift_settings(tmp_path, models)), raise_server_exceptions=False
    ) as client:
        for name in ("intact", *CORRUPTIONS):
            assert send(client, name, rows) == 1
        scored(client, "intact")
        metrics = samples(client)
        intact = drift(client, "intact")
        assert intact["status"] in ("ok", "warn", "drift")
        assert intact["reference_source"] == "metadata"
        for name in CORRUPTIONS:
            report = drift(client, name)
            assert report["status"] == "no_reference", (name, report)
            assert isinstance(report["reason"], str)
            assert "reference profile" in report["reason"]  # says why
            assert (report["reference_rows"], report["reference_source"]) == (None, None)
            assert report["window_rows"] == len(rows)
            assert {f["status"] for f in report["features"]} == {"no_reference"}
            assert all(f["psi"] is None and f["ks"] is None for f in report["features"])
            labels = (("model", name), ("version", "1"))
            assert metrics[("steward_model_drift_status", labels)] == -1
            assert metrics[("steward_drift_window_rows", labels)] == len(rows)
            assert series_of(client, name, "1") == {
                "steward_model_drift_status",
                "steward_drift_window_rows",
                "steward_estimated_accuracy",
            }
            assert send(client, name, rows[:1]) == 1  # and it keeps serving
        no_server_errors(client)


# --- hostile input on the route ---------------------------------------------------------------

HOSTILE_VERSIONS = {
    "x" * 33: (422, "validation_error"),  # over the 32 characters a version or alias may have
    "9" * 33: (422, "validation_error"),
    "9" * 32: (404, "unknown_version"),  # a number, but no such version
    "77": (404, "unknown_version"),
    "-3": (404, "unknown_version"),
    "+1": (404, "unknown_version"),
    "1.0": (404, "unknown_version"),
    "1e3": (404, "unknown_version"),
    " 1": (404, "unknown_version"),
    "٣": (404, "unknown_version"),  # ARABIC-INDIC DIGIT THREE: a digit to str.isdigit
    "²": (404, "unknown_version"),
    "\uff11": (404, "unknown_version"),  # FULLWIDTH DIGIT ONE
    "staging-nope": (404, "unknown_version"),
    "<script>": (404, "unknown_version"),
    "\x00": (404, "unknown_version"),
}


@pytest.mark.parametrize("version", list(HOSTILE_VERSIONS))
def test_a_hostile_version_is_a_4xx_that_does_not_echo_it(
    drift_client: TestClient, version: str
) -> None:
    status, code = HOSTILE_VERSIONS[version]
    response = drift_client.get("/models/iris/drift", params={"version": version})
    assert_error(response, status, code)
    assert version not in response.text
    assert quote(version) not in response.text
    no_server_errors(drift_client)


@pytest.mark.parametrize("model", ["nope", "x" * 300, "<script>", "%00", "iris%20", "IRIS"])
def test_an_unknown_model_is_a_404_that_does_not_echo_it(
    drift_client: TestClient, model: str
) -> None:
    response = drift_client.get(f"/models/{model}/drift")
    assert_error(response, 404, "unknown_model")
    assert model not in response.text
    no_server_errors(drift_client)


def test_drift_off_keeps_and_exports_nothing(tmp_path: Path, models_dir: Path) -> None:
    settings = drift_settings(tmp_path, models_dir, drift=False, drift_interval_seconds=0.01)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert send(client, "iris", [IRIS_SETOSA] * 20) == 1
        report = scored(client, "iris")
        assert report["status"] == "off"
        assert "STEWARD_DRIFT" in report["reason"]
        assert (report["window_rows"], report["features"], report["computed_at"]) == (0, [], None)
        drifting = {
            name
            for (name, _), _ in samples(client).items()
            if name.startswith(("steward_feature_drift", "steward_data_quality")) or name in GAUGES
        }
        assert drifting == set()
        no_server_errors(client)


def test_a_version_with_unreadable_metadata_is_no_server_error(
    drift_client: TestClient, models_dir: Path
) -> None:
    """A version on disk whose metadata.json cannot be read, never asked to serve: its drift
    report says it served nothing here (it was a 500 artifact_error: the route read its
    metadata for the accuracy on feedback); asked to serve, it is refused, and the route says
    so as /predict does (503)."""
    (models_dir / "iris" / "2").mkdir()
    (models_dir / "iris" / "2" / "metadata.json").write_text("{not json")
    services: Services = drift_client.app_state["services"]
    services.registry.refresh_versions("iris")
    report = drift(drift_client, "iris", "2")
    assert (report["version"], report["status"], report["window_rows"]) == (2, "collecting", 0)
    refused = drift_client.post("/predict/iris?version=2", json={"instances": [IRIS_SETOSA]})
    assert_error(refused, 503, "model_unavailable")
    assert_error(drift_client.get("/models/iris/drift?version=2"), 503, "model_unavailable")
    assert drift(drift_client, "iris")["version"] == 1


def test_a_wide_model_exports_its_top_drifting_features_only(
    tmp_path: Path, models_dir: Path
) -> None:
    """breast-cancer's 30 features above a cap of 5: /metrics has the PSI of the 3 features
    with the highest PSI (and their KS), the same figures as the report, and the data-quality
    issues of all features summed under feature="_all"."""
    settings = drift_settings(tmp_path, models_dir, drift_feature_labels=5, drift_top_features=3)
    frame, _ = demo_rows(next(d for d in DEMOS if d.name == "breast-cancer"))
    rows: list[dict[str, Any]] = [
        {str(k): v for k, v in row.items()} for row in frame.iloc[:60].to_dict("records")
    ]
    for row in rows[:20]:
        row["mean_radius"] *= 1.6  # some past the training maximum
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert send(client, "breast-cancer", rows) == 1
        report = scored(client, "breast-cancer")
        metrics = samples(client)
    features = {f["name"]: f for f in report["features"]}
    assert len(features) == 30
    ranked = sorted(features, key=lambda name: -features[name]["psi"])
    assert features[ranked[2]]["psi"] > features[ranked[3]]["psi"]  # the top 3 are clear
    labels = (("model", "breast-cancer"), ("version", "1"))

    def exported(name: str) -> dict[str, float]:
        return {
            dict(key)["feature"]: value
            for (metric, key), value in metrics.items()
            if metric == name and set(labels) <= set(key)
        }

    assert exported("steward_feature_drift_psi") == {
        name: features[name]["psi"] for name in ranked[:3]
    }
    assert exported("steward_feature_drift_ks") == {
        name: features[name]["ks"] for name in ranked[:3]
    }
    quality = {
        dict(key)["feature"] + "/" + dict(key)["issue"]: value
        for (metric, key), value in metrics.items()
        if metric == "steward_data_quality_total" and set(labels) <= set(key)
    }
    totals = {
        f"_all/{issue}": sum(f["quality"][issue] for f in features.values())
        for issue in ("missing", "out_of_range", "unseen_category")
    }
    assert quality == totals
    assert totals["_all/out_of_range"] >= features["mean_radius"]["quality"]["out_of_range"] > 0
