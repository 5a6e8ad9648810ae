"""PUT /admin/models/{model}/auto-rollback, and roll-backs counted by reason."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import ADMIN_AUTH, assert_error, metric

from app.aliases import ALIASES, read_alias_file
from app.settings import Settings
from app.training import train_demo

ROUTE = "/admin/models/iris/auto-rollback"


@pytest.fixture
def admin_settings(admin_settings: Settings, models_dir: Path) -> Settings:
    """Two versions of each demo model, production on 1."""
    train_demo(models_dir)
    return admin_settings


def admin_count(client: TestClient, outcome: str) -> float:
    return metric(client, "steward_admin_actions_total", action="auto_rollback", outcome=outcome)


def test_the_policy_is_set_kept_in_the_aliases_file_and_shown(admin: TestClient) -> None:
    response = admin.put(ROUTE, json={"enabled": True, "min_labels": 50}, headers=ADMIN_AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["enabled"], body["min_labels"], body["margin"]) == (True, 50, 0.05)
    assert (body["source"], body["set_by"], body["state"]) == ("model", "admin-api", "idle")
    root = admin.app_state["services"].registry.root
    kept = read_alias_file(root, "iris").auto_rollback
    assert kept is not None
    assert (kept.enabled, kept.min_labels, kept.margin, kept.by) == (True, 50, None, "admin-api")
    assert admin.get("/models/iris").json()["auto_rollback"] == body
    assert admin.get("/models/diabetes").json()["auto_rollback"]["source"] == "settings"

    off = admin.put(ROUTE, json={"enabled": False, "margin": None}, headers=ADMIN_AUTH).json()
    assert (off["enabled"], off["min_labels"], off["state"]) == (False, 100, "off")
    assert admin_count(admin, "ok") == 2


def test_the_route_needs_the_token(client: TestClient, admin: TestClient) -> None:
    assert_error(client.put(ROUTE, json={"enabled": True}, headers=ADMIN_AUTH), 403,
                 "admin_disabled")  # fmt: skip
    assert_error(admin.put(ROUTE, json={"enabled": True}), 401, "unauthorized")
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    assert_error(admin.put(ROUTE, json={"enabled": True}, headers=wrong), 401, "unauthorized")
    root = admin.app_state["services"].registry.root
    assert read_alias_file(root, "iris").auto_rollback is None
    assert admin_count(admin, "denied") == 2


def test_an_unknown_model_is_404_without_its_name(admin: TestClient) -> None:
    name = "nope-" + "x" * 200
    response = admin.put(f"/admin/models/{name}/auto-rollback", json={"enabled": True},
                         headers=ADMIN_AUTH)  # fmt: skip
    assert_error(response, 404, "unknown_model")
    assert "x" * 50 not in response.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"enabled": True, "min_labels": 0}, "min_labels"),
        ({"enabled": True, "min_labels": -1}, "min_labels"),
        ({"enabled": True, "min_labels": 10**12}, "min_labels"),
        ({"enabled": True, "min_labels": 2**64}, "min_labels"),
        ({"enabled": True, "min_labels": "100"}, "min_labels"),
        ({"enabled": True, "min_labels": 1.5}, "min_labels"),
        ({"enabled": True, "min_labels": True}, "min_labels"),
        ({"enabled": True, "min_labels": [100]}, "min_labels"),
        ({"enabled": True, "margin": -0.01}, "margin"),
        ({"enabled": True, "margin": 1.5}, "margin"),
        ({"enabled": True, "margin": 1.7976931348623157e308}, "margin"),
        ({"enabled": True, "margin": "0.1"}, "margin"),
        ({"enabled": True, "margin": "x" * 100_000}, "margin"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": 1}, "enabled"),
        ({"enabled": None}, "enabled"),
        ({"min_labels": 100}, "enabled"),
        ({"enabled": True, "extra": 1}, "extra"),
        ([{"enabled": True}], ""),
        ("on", ""),
    ],
)
def test_a_bad_body_is_422_naming_the_field_never_the_value(
    admin: TestClient, body: object, field: str
) -> None:
    root = admin.app_state["services"].registry.root
    before = (root / "iris" / ALIASES).read_bytes()
    response = admin.put(ROUTE, json=body, headers=ADMIN_AUTH)
    error = assert_error(response, 422, "validation_error")
    fields = [str(d.get("field", "")) for d in error["details"]]
    assert any(f.endswith(field) for f in fields), error
    assert "x" * 100 not in response.text
    assert "1000000000000" not in response.text
    assert (root / "iris" / ALIASES).read_bytes() == before
    assert admin_count(admin, "error") == 1
    assert admin.get("/readyz").json()["status"] == "ready"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"enabled": true, "margin": NaN}', 422),
        (b'{"enabled": true, "margin": Infinity}', 422),
        (b'{"enabled": true, "margin": 1e999}', 422),
        (b'{"enabled": true, "enabled": false}', 400),  # a key twice
        (b'\xef\xbb\xbf{"enabled": true}', 400),  # a byte-order mark
        (b"{", 400),
        (b"", 422),
    ],
)
def test_non_finite_numbers_and_broken_json_are_refused(
    admin: TestClient, raw: bytes, status: int
) -> None:
    headers = ADMIN_AUTH | {"Content-Type": "application/json"}
    response = admin.put(ROUTE, content=raw, headers=headers)
    assert_error(response, status, "invalid_json" if status == 400 else "validation_error")
    root = admin.app_state["services"].registry.root
    assert read_alias_file(root, "iris").auto_rollback is None


def test_rollbacks_over_the_admin_api_are_counted_as_manual(admin: TestClient) -> None:
    def count(model: str, reason: str) -> float:
        return metric(admin, "steward_rollbacks_total", model=model, reason=reason)

    assert (count("iris", "manual"), count("iris", "accuracy_drop")) == (0, 0)
    assert (count("diabetes", "manual"), count("diabetes", "mae_rise")) == (0, 0)
    for _ in range(2):
        promoted = admin.post("/admin/models/iris/promote", json={"version": 2}, headers=ADMIN_AUTH)
        assert promoted.status_code == 200, promoted.text
        rolled = admin.post("/admin/models/iris/rollback", headers=ADMIN_AUTH)
        assert rolled.status_code == 200, rolled.text
    refused = admin.post("/admin/models/diabetes/rollback", headers=ADMIN_AUTH)
    assert_error(refused, 409, "lifecycle_conflict")  # nothing to go back to: not counted
    assert_error(admin.post("/admin/models/nope/rollback", headers=ADMIN_AUTH), 404,
                 "unknown_model")  # fmt: skip
    assert count("iris", "manual") == 2
    assert count("iris", "accuracy_drop") == 0
    assert count("diabetes", "manual") == 0
    assert 'steward_rollbacks_total{model="nope"' not in admin.get("/metrics").text
