"""The traffic policy on the request path: canary answers (stable per X-Steward-Key) and shadow
predictions (logged, counted, never returned), through the real app on a real registry."""

import json
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import (
    IRIS_SETOSA,
    IRIS_VIRGINICA,
    metric,
    predict,
    prediction_ids,
    stored_rows,
    wait_until,
)
from pydantic import ValidationError
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from app import lifecycle
from app.aliases import ALIASES, TrafficMode, set_alias
from app.artifacts import read_metadata, save_version
from app.errors import InvalidGroundTruth, LifecycleConflict
from app.main import create_app
from app.prediction import in_share
from app.schemas import FeedbackItem, FeedbackResult
from app.services import Services
from app.settings import Settings
from app.training import train_demo


@pytest.fixture
def traffic_settings(tmp_path: Path, models_dir: Path) -> Settings:
    """iris: production v1, candidate v2 (both trained from the demo data); no periodic rescan,
    the tests rescan when they have changed the policy."""
    train_demo(models_dir)
    set_alias(models_dir, "iris", "candidate", 2)
    return Settings(models_dir=models_dir, data_dir=tmp_path / "data", reload_interval_seconds=0)


def start(settings: Settings) -> TestClient:
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture
def served(traffic_settings: Settings) -> Iterator[TestClient]:
    with start(traffic_settings) as client:
        yield client


def services(client: TestClient) -> Services:
    built: Services = client.app_state["services"]
    return built


def policy(client: TestClient, mode: TrafficMode, percent: float | None = None) -> None:
    """Set iris' traffic policy as the CLI does (aliases.json), then rescan as the server would."""
    built = services(client)
    lifecycle.set_traffic(built.registry.root, "iris", mode, percent)
    built.watcher.scan()


def versions(client: TestClient, count: int, key: str | bytes | None = None) -> Counter[int]:
    """Which versions answered ``count`` requests (with ``key`` as X-Steward-Key)."""
    headers = (
        {} if key is None else {b"X-Steward-Key": key if isinstance(key, bytes) else key.encode()}
    )
    answered: Counter[int] = Counter()
    for _ in range(count):
        response = client.post("/predict/iris", json={"instances": [IRIS_SETOSA]}, headers=headers)
        assert response.status_code == 200, response.text
        answered[response.json()["version"]] += 1
    return answered


# --- canary ------------------------------------------------------------------------------------


def test_a_canary_answers_its_share_from_the_candidate_and_the_log_agrees(
    served: TestClient,
) -> None:
    assert versions(served, 50) == {1: 50}  # a candidate alone answers nothing
    policy(served, "canary", 30)
    responses = [predict(served, "iris", IRIS_SETOSA) for _ in range(1000)]
    answered = Counter(r.json()["version"] for r in responses)
    # Binomial(1000, 0.3): mean 300, sd 14.5; these bounds fail once in 10^8 runs.
    assert 220 <= answered[2] <= 380
    assert answered[1] + answered[2] == 1000
    services(served).log.flush()
    logged = {row["id"]: row["version"] for row in stored_rows(services(served).settings.data_dir)}
    for response in responses:
        (prediction_id,) = prediction_ids(response)
        assert logged[prediction_id] == response.json()["version"]
    assert metric(served, "steward_predictions_total", model="iris", version="2") == answered[2]


def test_a_canary_key_always_gets_the_same_version(served: TestClient) -> None:
    policy(served, "canary", 30)
    chosen = {}
    for user in range(200):
        seen = versions(served, 3, f"user-{user}")
        assert len(seen) == 1, f"user-{user} was answered by {dict(seen)}"
        chosen[user] = next(iter(seen))
    on_candidate = {user for user, version in chosen.items() if version == 2}
    assert 30 <= len(on_candidate) <= 95  # Binomial(200, 0.3): mean 60, sd 6.5
    # The choice is a property of the key, the same in any process: widen the share, and every
    # key that was on the candidate stays there.
    policy(served, "canary", 60)
    for user in on_candidate:
        assert versions(served, 1, f"user-{user}") == {2: 1}


def test_in_share_is_a_stable_split_of_the_keys() -> None:
    keys = [f"k{i}" for i in range(10_000)]
    for percent in (0.0, 1.0, 25.0, 50.0, 99.0, 100.0):
        share = sum(in_share("iris", key, percent) for key in keys) / len(keys)
        assert abs(share - percent / 100) < 0.02
    small = {key for key in keys if in_share("iris", key, 10.0)}
    assert small <= {key for key in keys if in_share("iris", key, 20.0)}
    # another model splits the same keys its own way
    assert small != {key for key in keys if in_share("wine", key, 10.0)}


def test_a_canary_at_0_and_100_percent_and_a_pinned_version(served: TestClient) -> None:
    policy(served, "canary", 0)
    assert versions(served, 30) == {1: 30}
    policy(served, "canary", 100)
    assert versions(served, 30) == {2: 30}
    # a client that names a version gets it, whatever the policy
    pinned = served.post("/predict/iris?version=production", json={"instances": [IRIS_SETOSA]})
    assert pinned.json()["version"] == 1
    assert (
        served.post("/predict/iris?version=1", json={"instances": [IRIS_SETOSA]}).json()["version"]
        == 1
    )
    policy(served, "none")
    assert versions(served, 30) == {1: 30}


def test_any_key_is_a_key(served: TestClient) -> None:
    """Long, non-ASCII or odd bytes: a key header is hashed, never refused, never echoed (an
    empty one is no key: each request is drawn)."""
    policy(served, "canary", 50)
    for odd in (b"k" * 10_000, "ключ".encode(), b"\xff\xfe", b"a\tb"):
        answers = versions(served, 3, odd)
        assert len(answers) == 1  # the same version for the same key
    assert len(versions(served, 40, b"")) == 2
    pinned = served.post(
        "/predict/iris?version=1",
        json={"instances": [IRIS_SETOSA]},
        headers={"X-Steward-Key": "k" * 10_000},
    )
    assert pinned.json()["version"] == 1
    assert "kkkk" not in pinned.text


def test_when_the_candidate_becomes_production_the_canary_ends(
    served: TestClient, traffic_settings: Settings
) -> None:
    policy(served, "canary", 100)
    assert versions(served, 5) == {2: 5}
    lifecycle.promote(traffic_settings.models_dir, "iris", 2)
    services(served).watcher.scan()
    assert versions(served, 5) == {2: 5}
    assert served.get("/models/iris").json()["traffic"]["mode"] == "none"
    lifecycle.rollback(traffic_settings.models_dir, "iris")
    services(served).watcher.scan()
    assert versions(served, 5) == {1: 5}  # v2 is candidate again, with no canary


# --- shadow ------------------------------------------------------------------------------------


def shadow_rows(client: TestClient) -> list[sqlite3.Row]:
    """The shadow predictions in the store, oldest first."""
    built = services(client)
    built.log.flush()
    path = built.settings.data_dir / "steward.db"
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return list(db.execute("SELECT * FROM shadow_predictions ORDER BY id"))


def wait_for_shadows(client: TestClient) -> None:
    assert wait_until(lambda: services(client).predictor.shadows.pending_rows == 0, seconds=10)


def test_shadow_predictions_are_logged_and_never_returned(served: TestClient) -> None:
    policy(served, "shadow")  # percent defaults to 100
    responses = [predict(served, "iris", IRIS_SETOSA, IRIS_VIRGINICA) for _ in range(20)]
    assert {r.json()["version"] for r in responses} == {1}
    assert all(len(r.json()["predictions"]) == 2 for r in responses)
    wait_for_shadows(served)
    shadows = shadow_rows(served)
    served_ids = [i for r in responses for i in prediction_ids(r)]
    assert sorted(s["prediction_id"] for s in shadows) == sorted(served_ids)
    assert {s["version"] for s in shadows} == {2}
    assert not {s["id"] for s in shadows} & set(served_ids)
    # the served log holds the served rows only
    assert len(stored_rows(services(served).settings.data_dir)) == 40
    assert metric(served, "steward_shadow_predictions_total", model="iris", version="2") == 40
    assert metric(served, "steward_predictions_total", model="iris", version="2") == 0
    assert metric(served, "steward_predictions_total", model="iris", version="1") == 40


def test_shadow_of_a_share_of_the_requests(served: TestClient) -> None:
    policy(served, "shadow", 25)
    for _ in range(400):
        predict(served, "iris", IRIS_SETOSA)
    wait_for_shadows(served)
    shadowed = metric(served, "steward_shadow_predictions_total", model="iris", version="2")
    assert 50 <= shadowed <= 150  # Binomial(400, 0.25): mean 100, sd 8.7
    assert len(shadow_rows(served)) == shadowed


def test_a_request_pinned_to_a_version_is_not_shadowed(served: TestClient) -> None:
    policy(served, "shadow", 100)
    served.post("/predict/iris?version=candidate", json={"instances": [IRIS_SETOSA]})
    served.post("/predict/iris?version=production", json={"instances": [IRIS_SETOSA]})
    wait_for_shadows(served)
    # production answered the second: it is shadowed; the candidate's own answer is not
    assert metric(served, "steward_shadow_predictions_total", model="iris", version="2") == 1


def test_shadows_beyond_the_pending_limit_are_skipped_and_counted(
    traffic_settings: Settings,
) -> None:
    settings = traffic_settings.model_copy(update={"shadow_max_pending_rows": 2})
    with start(settings) as client:
        policy(client, "shadow", 100)
        assert predict(client, "iris", *[IRIS_SETOSA] * 3).status_code == 200
        wait_for_shadows(client)
        assert (
            metric(
                client, "steward_shadow_failures_total", model="iris", version="2", reason="skipped"
            )
            == 3
        )
        assert metric(client, "steward_shadow_predictions_total", model="iris", version="2") == 0
        assert predict(client, "iris", IRIS_SETOSA, IRIS_SETOSA).status_code == 200
        wait_for_shadows(client)
        assert metric(client, "steward_shadow_predictions_total", model="iris", version="2") == 2


def three_feature_iris(models_dir: Path) -> int:
    """A candidate that reads only three of iris' four features: another input contract."""
    metadata = read_metadata(models_dir, "iris", 1)
    data = load_iris()
    estimator = LogisticRegression(max_iter=500).fit(data.data[:, :3], data.target)
    features = metadata.features[:3]
    draft = metadata.model_copy(update={"features": features, "reference_profile": {}})
    return save_version(models_dir, draft, estimator).version


def test_a_candidate_with_another_schema_validates_the_request_itself(
    traffic_settings: Settings,
) -> None:
    version = three_feature_iris(traffic_settings.models_dir)
    set_alias(traffic_settings.models_dir, "iris", "candidate", version)
    with start(traffic_settings) as client:
        policy(client, "shadow", 100)
        # four features: production serves; the candidate's schema refuses the fourth
        assert predict(client, "iris", IRIS_SETOSA).json()["version"] == 1
        wait_for_shadows(client)
        labels = {"model": "iris", "version": str(version)}
        assert (
            metric(client, "steward_shadow_failures_total", reason="invalid_input", **labels) == 1
        )
        assert metric(client, "steward_shadow_predictions_total", **labels) == 0
        assert client.get("/readyz").status_code == 200


def test_a_candidate_that_fails_on_the_rows_is_counted_and_the_client_is_answered(
    traffic_settings: Settings,
) -> None:
    """The candidate takes the log of each feature first: it scores its typical row (and so
    passes its warm-up) but fails on a negative value, which production scores."""
    models_dir = traffic_settings.models_dir
    data = load_iris()
    logs = Pipeline([("log", FunctionTransformer(np.log)), ("model", LogisticRegression())])
    logs.fit(data.data, data.target)
    metadata = read_metadata(models_dir, "iris", 1)
    version = save_version(models_dir, metadata, logs).version
    set_alias(models_dir, "iris", "candidate", version)
    with start(traffic_settings) as client:
        policy(client, "shadow", 100)
        negative = {**IRIS_SETOSA, "sepal_width_cm": -1.0}
        response = predict(client, "iris", negative)
        assert response.status_code == 200
        assert response.json()["version"] == 1
        wait_for_shadows(client)
        labels = {"model": "iris", "version": str(version)}
        assert (
            metric(client, "steward_shadow_failures_total", reason="model_failure", **labels) == 1
        )
        assert predict(client, "iris", IRIS_SETOSA).status_code == 200
        wait_for_shadows(client)
        assert metric(client, "steward_shadow_predictions_total", **labels) == 1
        assert client.get("/readyz").status_code == 200


def test_feedback_sent_while_the_shadow_runs_labels_both(traffic_settings: Settings) -> None:
    """The shadow work of a request waits for its window (here 3 s, long enough that the test
    sees it pending) after the response: a client that labels at once still has the
    candidate's prediction labelled with its own."""
    settings = traffic_settings.model_copy(
        update={"shadow_window_seconds": 3, "shadow_wait_seconds": 6}
    )
    with start(settings) as client:
        policy(client, "shadow", 100)
        (prediction_id,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
        assert services(client).predictor.shadows.pending_rows == 1  # not run yet
        answer = client.post(
            "/feedback", json={"prediction_id": prediction_id, "ground_truth": "setosa"}
        )
        assert answer.json()["status"] == "accepted"
        (shadow,) = shadow_rows(client)
        assert shadow["prediction_id"] == prediction_id
        assert shadow["ground_truth"] == '"setosa"'
        assert shadow["correct"] == 1
        labels = {"model": "iris", "version": "2", "role": "challenger"}
        assert metric(client, "steward_shadow_feedback_total", outcome="correct", **labels) == 1


def test_a_candidate_with_another_schema_cannot_be_a_canary(traffic_settings: Settings) -> None:
    """A canary would refuse requests production accepts: refused when set (409), and not
    applied when written by hand (production answers everything, GET /models says why)."""
    models_dir = traffic_settings.models_dir
    version = three_feature_iris(models_dir)
    set_alias(models_dir, "iris", "candidate", version)
    with pytest.raises(LifecycleConflict, match="reads other inputs than production"):
        lifecycle.set_traffic(models_dir, "iris", "canary", 50)
    path = models_dir / "iris" / ALIASES
    raw = json.loads(path.read_text())
    raw["traffic"] = {"mode": "canary", "percent": 100.0, "candidate": version}
    path.write_text(json.dumps(raw))
    with start(traffic_settings) as client:
        assert versions(client, 20) == {1: 20}
        traffic = client.get("/models/iris").json()["traffic"]
        assert traffic["active"] is False
        assert "reads other inputs than production" in traffic["inactive_reason"]


def test_a_candidate_whose_training_ranges_differ_can_be_a_canary(
    traffic_settings: Settings,
) -> None:
    """A retraining of one recipe on other rows sees other extremes: the same inputs still,
    so a canary (only an outlier far outside both accepted ranges could part them)."""
    models_dir = traffic_settings.models_dir
    metadata = read_metadata(models_dir, "iris", 1)
    features = [
        f.model_copy(update={"max": (f.max or 0) - 0.2, "min": (f.min or 0) + 0.1})
        for f in metadata.features
    ]
    data = load_iris()
    estimator = LogisticRegression(max_iter=500).fit(data.data, data.target)
    version = save_version(
        models_dir, metadata.model_copy(update={"features": features}), estimator
    ).version
    set_alias(models_dir, "iris", "candidate", version)
    state = lifecycle.set_traffic(models_dir, "iris", "canary", 100)
    assert (state.traffic.mode, state.traffic.candidate) == ("canary", version)
    with start(traffic_settings) as client:
        assert client.get("/models/iris").json()["traffic"]["active"] is True
        assert versions(client, 5) == {version: 5}


def test_a_new_candidate_starts_with_no_traffic(
    served: TestClient, traffic_settings: Settings
) -> None:
    """A canary set for v2 never reaches v3: moving the candidate sets the policy to none."""
    policy(served, "canary", 100)
    assert versions(served, 5) == {2: 5}
    train_demo(traffic_settings.models_dir)  # v3
    lifecycle.promote(traffic_settings.models_dir, "iris", 3, "candidate")
    services(served).watcher.scan()
    assert versions(served, 20) == {1: 20}
    assert served.get("/models/iris").json()["traffic"]["mode"] == "none"


def test_a_policy_at_0_percent_is_not_active(served: TestClient) -> None:
    policy(served, "shadow", 0)
    traffic = served.get("/models/iris").json()["traffic"]
    assert (traffic["mode"], traffic["active"]) == ("shadow", False)
    assert traffic["inactive_reason"] == "0% of requests go to the candidate"
    predict(served, "iris", IRIS_SETOSA)
    wait_for_shadows(served)
    assert metric(served, "steward_shadow_predictions_total", model="iris", version="2") == 0


def test_a_shadow_later_than_the_feedback_is_counted_late_once(traffic_settings: Settings) -> None:
    """Feedback that stopped waiting for a shadow (here after 10 ms, where the window is 3 s)
    labels the served row alone and counts the shadow ``late``, once; the shadow, logged later,
    stays unlabelled. A feedback that labels nothing counts nothing."""
    settings = traffic_settings.model_copy(
        update={"shadow_window_seconds": 3, "shadow_wait_seconds": 6}
    )
    with start(settings) as client:
        policy(client, "shadow", 100)
        (prediction_id,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
        built = services(client)
        assert client.portal is not None
        running = client.portal.call(built.predictor.shadows.settled, {prediction_id}, 0.01)
        assert [(i, m.version) for i, m in running.items()] == [(prediction_id, 2)]
        refused = FeedbackItem(prediction_id=prediction_id, ground_truth="rose")
        (error,) = built.feedback.record([refused], running)
        assert isinstance(error, InvalidGroundTruth)
        labels = {"model": "iris", "version": "2", "reason": "late"}
        assert metric(client, "steward_shadow_failures_total", **labels) == 0
        item = FeedbackItem(prediction_id=prediction_id, ground_truth="setosa")
        (accepted,) = built.feedback.record([item], running)
        assert isinstance(accepted, FeedbackResult)
        assert accepted.status == "accepted"
        (duplicate,) = built.feedback.record([item], running)
        assert isinstance(duplicate, FeedbackResult)
        assert duplicate.status == "duplicate"
        wait_for_shadows(client)
        assert metric(client, "steward_shadow_failures_total", **labels) == 1
        assert metric(client, "steward_shadow_predictions_total", model="iris", version="2") == 1
        (shadow,) = shadow_rows(client)
        assert shadow["ground_truth"] is None
        challenger = {"model": "iris", "version": "2", "role": "challenger"}
        assert metric(client, "steward_shadow_feedback_total", outcome="correct", **challenger) == 0


def test_feedback_for_rows_shadowed_by_a_removed_version_is_accepted(
    traffic_settings: Settings,
) -> None:
    """A discarded candidate's folder may be deleted: the rows it shadowed still take feedback
    (no 500, no server path in the answer); its shadows stay unlabelled."""
    with start(traffic_settings) as client:
        policy(client, "shadow", 100)
        (prediction_id,) = prediction_ids(predict(client, "iris", IRIS_SETOSA))
        wait_for_shadows(client)
        services(client).log.flush()
    lifecycle.set_traffic(traffic_settings.models_dir, "iris", "none")
    set_alias(traffic_settings.models_dir, "iris", "candidate", 1)
    shutil.rmtree(traffic_settings.models_dir / "iris" / "2")
    with start(traffic_settings) as client:
        answer = client.post(
            "/feedback", json={"prediction_id": prediction_id, "ground_truth": "setosa"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "accepted"
        (shadow,) = shadow_rows(client)
        assert shadow["ground_truth"] is None


def test_the_shadow_wait_must_outlast_the_window(traffic_settings: Settings) -> None:
    with pytest.raises(ValidationError, match="SHADOW_WAIT_SECONDS must be longer"):
        Settings(
            models_dir=traffic_settings.models_dir,
            shadow_window_seconds=1.0,
            shadow_wait_seconds=0.5,
        )
