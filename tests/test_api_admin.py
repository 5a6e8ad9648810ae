"""The admin API: its token (disabled, missing, malformed, wrong, right), promote, rollback and
reload over HTTP on a real registry with two trained versions, its errors, log and counter."""

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import ADMIN_AUTH, ADMIN_TOKEN, IRIS_SETOSA, assert_error, metric, predict

from app.aliases import ALIASES, read_alias_file, set_alias
from app.artifacts import ARTIFACT
from app.errors import InvalidSettings
from app.main import create_app
from app.settings import Settings, load_settings
from app.training import train_demo

TOKEN, AUTH = ADMIN_TOKEN, ADMIN_AUTH
PROMOTE = "/admin/models/iris/promote"
ROLLBACK = "/admin/models/iris/rollback"


@pytest.fixture
def admin_settings(admin_settings: Settings, models_dir: Path) -> Settings:
    """Two versions of each demo model, production on 1."""
    train_demo(models_dir)
    return admin_settings


def admin_count(client: TestClient, action: str, outcome: str) -> float:
    return metric(client, "steward_admin_actions_total", action=action, outcome=outcome)


# --- The token ---------------------------------------------------------------------------------


def test_without_a_token_configured_the_admin_api_is_disabled(client: TestClient) -> None:
    for path in ("/admin/reload", PROMOTE, ROLLBACK):
        error = assert_error(
            client.post(path, json={"version": 1}, headers=AUTH), 403, "admin_disabled"
        )
        assert "STEWARD_ADMIN_TOKEN" in error["message"]
        assert "STEWARD_ADMIN_TOKEN_FILE" in error["message"]
    assert admin_count(client, "reload", "denied") == 1
    assert admin_count(client, "promote", "denied") == 1
    assert admin_count(client, "reload", "ok") == 0


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {TOKEN}",
        f"Bearer{TOKEN}",
        "Bearer wrong-token-but-long-enough",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer tökén-ünicode-0123456789",
    ],
)
def test_a_missing_malformed_or_wrong_token_is_401(
    admin: TestClient, authorization: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    headers = [] if authorization is None else [(b"authorization", authorization.encode("latin-1"))]
    with caplog.at_level(logging.DEBUG):
        response = admin.post(PROMOTE, json={"version": 2}, headers=headers)
    error = assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "Bearer <token>" in error["message"]
    sent = (authorization or "").split(" ")[-1]
    for secret in {TOKEN, sent} - {"", "Bearer"}:
        assert secret not in response.text
        assert secret not in caplog.text
    assert "admin promote model='iris' outcome=denied" in caplog.text
    assert admin_count(admin, "promote", "denied") == 1
    assert read_alias_file(admin.app_state["services"].registry.root, "iris").aliases == {
        "production": 1
    }


def test_a_denied_call_on_an_unknown_admin_path_is_a_plain_404(admin: TestClient) -> None:
    assert_error(admin.post("/admin/nope/x" * 20), 404, "not_found")
    assert_error(admin.get("/admin/reload", headers=AUTH), 405, "method_not_allowed")
    text = admin.get("/metrics").text
    samples = [line for line in text.splitlines() if line.startswith("steward_admin_actions_total")]
    assert len(samples) == 21  # 7 actions x 3 outcomes, nothing else
    assert all(line.endswith(" 0.0") for line in samples)


def test_the_token_can_come_from_a_file(tmp_path: Path, admin_settings: Settings) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    values = admin_settings.model_dump() | {"admin_token": None, "admin_token_file": secret}
    settings = Settings(**values)
    with TestClient(create_app(settings)) as client:
        assert client.post("/admin/reload", headers=AUTH).status_code == 200
        wrong = {"Authorization": f"Bearer {TOKEN[:-1]}"}
        assert_error(client.post("/admin/reload", headers=wrong), 401, "unauthorized")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"admin_token": "short-secret"}, "STEWARD_ADMIN_TOKEN: the token must be at least 16"),
        ({"admin_token_file": "missing"}, "STEWARD_ADMIN_TOKEN_FILE: cannot read"),
        ({"admin_token_file": "empty"}, "STEWARD_ADMIN_TOKEN_FILE:"),
        ({"admin_token_file": "short"}, "STEWARD_ADMIN_TOKEN_FILE: the token must be at least"),
        ({"admin_token_file": "unreadable"}, "STEWARD_ADMIN_TOKEN_FILE: cannot read"),
        ({"admin_token": TOKEN, "admin_token_file": "good"}, "are both set"),
    ],
)
def test_bad_admin_token_settings_are_refused_without_the_value(
    tmp_path: Path, values: dict[str, str], expected: str
) -> None:
    files = {
        "empty": "\n",
        "short": "short-secret\n",
        "good": TOKEN,
        "unreadable": "token-in-a-dir",
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    (tmp_path / "unreadable").unlink()
    (tmp_path / "unreadable").mkdir()
    given = {
        key: str(tmp_path / value) if key == "admin_token_file" else value
        for key, value in values.items()
    }
    with pytest.raises(InvalidSettings) as raised:
        load_settings(models_dir=tmp_path, **given)
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message
    for secret in ("short-secret", TOKEN, "token-in-a-dir"):
        assert secret not in message


def test_the_token_never_shows_in_the_settings_repr() -> None:
    settings = Settings(admin_token=TOKEN)
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings.model_dump())


# --- Promote, rollback, reload -----------------------------------------------------------------


def test_promote_then_rollback_swap_the_served_version_without_restart(
    admin: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert predict(admin, "iris", IRIS_SETOSA).json()["version"] == 1
    with caplog.at_level(logging.INFO, logger="app.api.admin"):
        promoted = admin.post(PROMOTE, json={"version": 2}, headers=AUTH)
    assert promoted.status_code == 200, promoted.text
    body = promoted.json()
    assert body["aliases"] == {"production": 2}
    assert body["change"]["from"] == 1
    assert body["change"]["to"] == 2
    assert body["change"]["by"] == "admin-api"
    assert body["history"][-1] == body["change"]
    assert body["serving"]["serving"] == 2
    assert body["serving"]["refused"] is None
    assert "admin promote model='iris' outcome=ok" in caplog.text
    assert TOKEN not in caplog.text

    assert predict(admin, "iris", IRIS_SETOSA).json()["version"] == 2
    assert admin.get("/models/iris").json()["aliases"] == {"production": 2}
    root = admin.app_state["services"].registry.root
    change = read_alias_file(root, "iris").history[-1]
    assert (change.by, change.action, change.to) == ("admin-api", "promote", 2)

    again = admin.post(PROMOTE, json={"version": 2, "alias": "production"}, headers=AUTH)
    assert again.json()["change"] is None  # already there: nothing written

    rolled = admin.post(ROLLBACK, headers=AUTH)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["change"]["action"] == "rollback"
    assert rolled.json()["serving"]["serving"] == 1
    assert predict(admin, "iris", IRIS_SETOSA).json()["version"] == 1
    assert_error(admin.post(ROLLBACK, headers=AUTH), 409, "lifecycle_conflict")


def test_promote_to_candidate_leaves_production_serving(admin: TestClient) -> None:
    body = admin.post(PROMOTE, json={"version": 2, "alias": "candidate"}, headers=AUTH).json()
    assert body["aliases"] == {"production": 1, "candidate": 2}
    assert body["serving"]["serving"] == 1
    assert predict(admin, "iris", IRIS_SETOSA).json()["version"] == 1


def test_rollback_with_no_history_is_409(admin: TestClient) -> None:
    error = assert_error(admin.post(ROLLBACK, headers=AUTH), 409, "lifecycle_conflict")
    assert "no earlier production version" in error["message"]


def test_unknown_model_or_version_is_404(admin: TestClient) -> None:
    """An unknown model is named by neither its name nor the registry's folder."""
    for response in (
        admin.post("/admin/models/nope-model/promote", json={"version": 1}, headers=AUTH),
        admin.post("/admin/models/nope-model/rollback", headers=AUTH),
        admin.put("/admin/models/nope-model/traffic", json={"mode": "none"}, headers=AUTH),
        admin.post("/admin/models/%2E%2E/rollback", headers=AUTH),
    ):
        error = assert_error(response, 404, "unknown_model")
        assert "nope" not in response.text
        assert str(admin.app_state["services"].registry.root) not in response.text
        assert error["details"] == [
            {"field": "model", "message": "not a model of this server (GET /models)"}
        ]
    error = assert_error(
        admin.post(PROMOTE, json={"version": 9}, headers=AUTH), 404, "unknown_version"
    )
    assert "versions: 1, 2" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"version": "two"},
        {"version": "2"},
        {"version": 2.0},
        {"version": True},
        {"version": 0},
        {"version": 10**30},
        {"version": 2, "extra": 1},
        {"version": 2, "alias": "staging"},
        {"alias": "production"},
        [2],
    ],
)
def test_a_bad_body_is_422(admin: TestClient, body: object) -> None:
    assert_error(admin.post(PROMOTE, json=body, headers=AUTH), 422, "validation_error")
    assert admin_count(admin, "promote", "error") == 1


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"version": 1' + b"9" * 5000 + b"}", b'{"version": "\xff"}', b"\xef\xbb\xbf{}"],
    ids=["truncated", "5000 digits", "invalid utf-8", "byte-order mark"],
)
def test_a_body_that_is_not_json_is_400(admin: TestClient, body: bytes) -> None:
    for path, method in ((PROMOTE, "POST"), ("/admin/models/iris/traffic", "PUT")):
        response = admin.request(
            method, path, content=body, headers=AUTH | {"Content-Type": "application/json"}
        )
        error = assert_error(response, 400, "invalid_json")
        assert "9999" not in response.text
        assert error["message"]


def test_a_version_this_server_refuses_is_not_promoted(admin: TestClient) -> None:
    """Tampered: refused with its reason (503), aliases.json untouched (no replica or restart
    picks it up), v1 keeps serving."""
    root = admin.app_state["services"].registry.root
    artifact = root / "iris" / "2" / ARTIFACT
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    before = (root / "iris" / ALIASES).read_bytes()
    error = assert_error(
        admin.post(PROMOTE, json={"version": 2}, headers=AUTH), 503, "model_unavailable"
    )
    assert "checksum_mismatch" in error["message"]
    assert (root / "iris" / ALIASES).read_bytes() == before
    assert predict(admin, "iris", IRIS_SETOSA).json()["version"] == 1


def test_a_refused_swap_found_by_the_rescan_is_reported(admin: TestClient) -> None:
    """A change made on disk behind the server's back (the CLI, another host) to a version it
    refuses: reload reports it, and v1 keeps serving."""
    root = admin.app_state["services"].registry.root
    artifact = root / "iris" / "2" / ARTIFACT
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    set_alias(root, "iris", "production", 2)
    report = admin.post("/admin/reload", headers=AUTH).json()
    assert [p["reason"] for p in report["refused"]] == ["checksum_mismatch"]
    assert predict(admin, "iris", IRIS_SETOSA).json()["version"] == 1


def test_reload_reports_an_alias_changed_on_disk(admin: TestClient) -> None:
    root = admin.app_state["services"].registry.root
    set_alias(root, "iris", "production", 2)
    report = admin.post("/admin/reload", headers=AUTH).json()
    assert report["moved"] == [{"model": "iris", "alias": "production", "old": 1, "new": 2}]
    assert report["refused"] == []
    assert predict(admin, "iris", IRIS_SETOSA).json()["version"] == 2
    assert admin.post("/admin/reload", headers=AUTH).json()["moved"] == []


def test_the_counter_counts_each_outcome(admin: TestClient) -> None:
    wrong = {"Authorization": "Bearer wrong-token-but-long-enough"}
    admin.post(PROMOTE, json={"version": 2}, headers=AUTH)  # promote ok
    admin.post(PROMOTE, json={"version": 9}, headers=AUTH)  # promote error (404)
    admin.post(PROMOTE, json={"version": "x"}, headers=AUTH)  # promote error (422)
    admin.post(PROMOTE, json={"version": 2})  # promote denied
    admin.post(ROLLBACK, headers=AUTH)  # rollback ok
    admin.post(ROLLBACK, headers=AUTH)  # rollback error (409)
    admin.post(ROLLBACK, headers=wrong)  # rollback denied
    admin.post("/admin/reload", headers=AUTH)  # reload ok
    admin.post("/admin/reload", headers=AUTH)  # reload ok
    expected = {
        ("promote", "ok"): 1,
        ("promote", "error"): 2,
        ("promote", "denied"): 1,
        ("rollback", "ok"): 1,
        ("rollback", "error"): 1,
        ("rollback", "denied"): 1,
        ("reload", "ok"): 2,
        ("reload", "error"): 0,
        ("reload", "denied"): 0,
    }
    counted = {key: admin_count(admin, *key) for key in expected}
    assert counted == expected


def test_openapi_documents_the_admin_routes_with_the_bearer_scheme(admin: TestClient) -> None:
    schema = admin.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path in (
        "/admin/models/{model}/promote",
        "/admin/models/{model}/rollback",
        "/admin/reload",
    ):
        operation = schema["paths"][path]["post"]
        assert operation["tags"] == ["admin"]
        assert operation["security"] == [{"HTTPBearer": []}]
        assert {"401", "403", "422"} <= set(operation["responses"])
        assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    body = schema["paths"]["/admin/models/{model}/promote"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("PromoteRequest")


# --- The traffic policy ------------------------------------------------------------------------

TRAFFIC = "/admin/models/iris/traffic"


def traffic_gauge(client: TestClient, mode: str, model: str = "iris") -> float | None:
    registry = client.app_state["services"].metrics.registry
    value: float | None = registry.get_sample_value(
        "steward_model_traffic_percent", {"model": model, "mode": mode}
    )
    return value


def with_candidate(client: TestClient) -> None:
    response = client.post(PROMOTE, json={"version": 2, "alias": "candidate"}, headers=AUTH)
    assert response.status_code == 200, response.text


def test_traffic_is_set_applied_shown_and_measured(
    admin: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with_candidate(admin)
    assert traffic_gauge(admin, "none") == 0
    with caplog.at_level(logging.INFO):
        response = admin.put(TRAFFIC, json={"mode": "shadow"}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["aliases"] == {"production": 1, "candidate": 2}
    assert body["change"] is None
    assert body["serving"]["traffic"] == "shadow"
    traffic = body["traffic"]
    assert (traffic["mode"], traffic["percent"], traffic["by"]) == ("shadow", 100.0, "admin-api")
    assert (traffic["active"], traffic["inactive_reason"]) == (True, None)
    assert "admin traffic model='iris' outcome=ok" in caplog.text
    assert "iris: traffic shadow 100% (was none 0%; by admin-api)" in caplog.text
    assert admin.get("/models/iris").json()["traffic"] == traffic
    assert traffic_gauge(admin, "shadow") == 100
    assert traffic_gauge(admin, "none") is None
    root = admin.app_state["services"].registry.root
    assert read_alias_file(root, "iris").traffic.mode == "shadow"

    body = admin.put(TRAFFIC, json={"mode": "canary", "percent": 12.5}, headers=AUTH).json()
    assert (body["traffic"]["mode"], body["traffic"]["percent"]) == ("canary", 12.5)
    assert (traffic_gauge(admin, "canary"), traffic_gauge(admin, "shadow")) == (12.5, None)
    body = admin.put(TRAFFIC, json={"mode": "canary", "percent": 0}, headers=AUTH).json()
    assert body["traffic"]["percent"] == 0
    assert traffic_gauge(admin, "canary") == 0
    body = admin.put(TRAFFIC, json={"mode": "none", "percent": 0}, headers=AUTH).json()
    assert (body["traffic"]["mode"], body["traffic"]["active"]) == ("none", False)
    assert (traffic_gauge(admin, "none"), traffic_gauge(admin, "canary")) == (0, None)
    assert traffic_gauge(admin, "none", model="diabetes") == 0


def test_promoting_production_to_the_candidate_ends_the_traffic_policy(admin: TestClient) -> None:
    with_candidate(admin)
    admin.put(TRAFFIC, json={"mode": "canary", "percent": 50}, headers=AUTH)
    body = admin.post(PROMOTE, json={"version": 2}, headers=AUTH).json()
    assert body["aliases"] == {"production": 2, "candidate": 2}
    assert (body["traffic"]["mode"], body["traffic"]["percent"]) == ("none", 0.0)
    assert body["serving"] == {**body["serving"], "serving": 2, "traffic": "none"}
    assert (traffic_gauge(admin, "none"), traffic_gauge(admin, "canary")) == (0, None)
    # And the same policy cannot start again until a new candidate is set.
    error = assert_error(
        admin.put(TRAFFIC, json={"mode": "shadow"}, headers=AUTH), 409, "lifecycle_conflict"
    )
    assert "both are version 2" in error["message"]


def test_shadow_or_canary_without_a_candidate_is_409_saying_how(admin: TestClient) -> None:
    root = admin.app_state["services"].registry.root
    before = (root / "iris" / ALIASES).read_bytes()
    for body in ({"mode": "shadow"}, {"mode": "canary", "percent": 10}):
        error = assert_error(admin.put(TRAFFIC, json=body, headers=AUTH), 409, "lifecycle_conflict")
        assert "steward promote iris VERSION --alias candidate" in error["message"]
    assert (root / "iris" / ALIASES).read_bytes() == before
    assert admin.put(TRAFFIC, json={"mode": "none"}, headers=AUTH).status_code == 200


def test_traffic_of_an_unknown_model_is_404(admin: TestClient) -> None:
    response = admin.put("/admin/models/nope/traffic", json={"mode": "none"}, headers=AUTH)
    assert_error(response, 404, "unknown_model")
    hostile = "x" * 10_000
    response = admin.put(f"/admin/models/{hostile}/traffic", json={"mode": "none"}, headers=AUTH)
    assert hostile not in assert_error(response, 404, "unknown_model")["message"]


def test_traffic_needs_the_token(client: TestClient, admin: TestClient) -> None:
    body = {"mode": "none"}
    assert_error(client.put(TRAFFIC, json=body, headers=AUTH), 403, "admin_disabled")
    assert_error(admin.put(TRAFFIC, json=body), 401, "unauthorized")
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    assert_error(admin.put(TRAFFIC, json=body, headers=wrong), 401, "unauthorized")
    assert admin_count(admin, "traffic", "denied") == 2
    assert admin_count(client, "traffic", "denied") == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "canary", "percent": -1}, "percent"),
        ({"mode": "canary", "percent": 101}, "percent"),
        ({"mode": "canary", "percent": 100.0001}, "percent"),
        ({"mode": "canary", "percent": 1.7976931348623157e308}, "percent"),
        ({"mode": "canary", "percent": "50"}, "percent"),
        ({"mode": "canary", "percent": True}, "percent"),
        ({"mode": "canary", "percent": None}, "percent"),
        ({"mode": "canary", "percent": [50]}, "percent"),
        ({"mode": "canary", "percent": {"value": 50}}, "percent"),
        ({"mode": "canary"}, "percent"),  # required for canary
        ({"mode": "none", "percent": 5}, "percent"),  # only 0 for none
        ({"mode": "blue-green"}, "mode"),
        ({"mode": "SHADOW"}, "mode"),
        ({"mode": None}, "mode"),
        ({"mode": 1}, "mode"),
        ({"mode": "x" * 100_000}, "mode"),
        ({"percent": 10}, "mode"),
        ({"mode": "shadow", "percent": 10, "extra": 1}, "extra"),
        ({"mode": "shadow", "candidate": 3}, "candidate"),
        ([{"mode": "shadow"}], ""),
        ("shadow", ""),
    ],
)
def test_a_bad_traffic_body_is_422_naming_the_field(
    admin: TestClient, body: object, field: str
) -> None:
    with_candidate(admin)
    root = admin.app_state["services"].registry.root
    before = (root / "iris" / ALIASES).read_bytes()
    response = admin.put(TRAFFIC, json=body, headers=AUTH)
    error = assert_error(response, 422, "validation_error")
    fields = [str(d.get("field", "")) for d in error["details"]]
    assert any(f.endswith(field) for f in fields), error
    assert "x" * 100 not in response.text  # never echoed
    assert (root / "iris" / ALIASES).read_bytes() == before
    assert admin_count(admin, "traffic", "error") == 1
    assert admin.get("/readyz").json()["status"] == "ready"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"mode": "canary", "percent": NaN}', 422),
        (b'{"mode": "canary", "percent": Infinity}', 422),
        (b'{"mode": "canary", "percent": -Infinity}', 422),
        (b'{"mode": "canary", "percent": 1e999}', 422),
        (b'{"mode": "canary", "percent": 10**2}', 400),
        (b'{"mode": "canary", "percent": 0x10}', 400),
        (b'{"mode": "shadow", "mode": "canary", "percent": 5}', 400),  # a key twice
        (b'{"mode": "canary", "percent": 5, "percent": 50}', 400),
        (b'\xef\xbb\xbf{"mode": "none"}', 400),  # a byte-order mark
        (b"{", 400),
        (b"", 422),  # no body: the body is required
    ],
)
def test_a_traffic_body_with_non_finite_numbers_or_broken_json_is_refused(
    admin: TestClient, raw: bytes, status: int
) -> None:
    with_candidate(admin)
    response = admin.put(TRAFFIC, content=raw, headers=AUTH | {"Content-Type": "application/json"})
    assert_error(response, status, "invalid_json" if status == 400 else "validation_error")
    root = admin.app_state["services"].registry.root
    assert read_alias_file(root, "iris").traffic.mode == "none"
    assert admin_count(admin, "traffic", "error") == 1


def test_a_promote_body_with_a_key_twice_is_400(admin: TestClient) -> None:
    raw = b'{"version": 2, "alias": "candidate", "alias": "production"}'
    response = admin.post(PROMOTE, content=raw, headers=AUTH | {"Content-Type": "application/json"})
    error = assert_error(response, 400, "invalid_json")
    assert "a key appears twice" in error["message"]
    assert "production" not in error["message"]
    root = admin.app_state["services"].registry.root
    assert read_alias_file(root, "iris").aliases == {"production": 1}


def test_the_traffic_counter_counts_each_outcome(admin: TestClient) -> None:
    wrong = {"Authorization": "Bearer wrong-token-but-long-enough"}
    admin.put(TRAFFIC, json={"mode": "shadow"}, headers=AUTH)  # error (409: no candidate)
    with_candidate(admin)  # promote ok
    admin.put(TRAFFIC, json={"mode": "shadow"}, headers=AUTH)  # ok
    admin.put(TRAFFIC, json={"mode": "shadow"}, headers=AUTH)  # ok (the same: nothing written)
    admin.put(TRAFFIC, json={"mode": "canary"}, headers=AUTH)  # error (422)
    admin.put(TRAFFIC, json={"mode": "none"})  # denied
    admin.put(TRAFFIC, json={"mode": "none"}, headers=wrong)  # denied
    admin.put("/admin/models/nope/traffic", json={"mode": "none"}, headers=AUTH)  # error (404)
    counted = {
        (action, outcome): admin_count(admin, action, outcome)
        for action in ("traffic", "promote")
        for outcome in ("ok", "error", "denied")
    }
    assert counted == {
        ("traffic", "ok"): 2,
        ("traffic", "error"): 3,
        ("traffic", "denied"): 2,
        ("promote", "ok"): 1,
        ("promote", "error"): 0,
        ("promote", "denied"): 0,
    }


def test_openapi_documents_the_traffic_route(admin: TestClient) -> None:
    schema = admin.get("/openapi.json").json()
    operation = schema["paths"]["/admin/models/{model}/traffic"]["put"]
    assert operation["tags"] == ["admin"]
    assert operation["security"] == [{"HTTPBearer": []}]
    assert {"401", "403", "404", "409", "422"} <= set(operation["responses"])
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("TrafficRequest")
    request = schema["components"]["schemas"]["TrafficRequest"]
    assert request["additionalProperties"] is False
    assert request["required"] == ["mode"]
    assert request["properties"]["mode"]["enum"] == ["none", "shadow", "canary"]
    percent = request["properties"]["percent"]
    assert (percent["type"], percent["minimum"], percent["maximum"]) == ("number", 0, 100)
