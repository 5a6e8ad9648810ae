"""The admin API: its token (disabled, missing, malformed, wrong, right), promote, rollback and
reload over HTTP on a real registry with two trained versions, its errors, log and counter."""

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import IRIS_SETOSA, assert_error, metric, predict

from app.artifacts import ALIASES, ARTIFACT, read_alias_file, set_alias
from app.errors import InvalidSettings
from app.main import create_app
from app.settings import Settings, load_settings
from app.training import train_demo

TOKEN = "s3cret-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROMOTE = "/admin/models/iris/promote"
ROLLBACK = "/admin/models/iris/rollback"


@pytest.fixture
def admin_settings(tmp_path: Path, models_dir: Path) -> Settings:
    """Two versions of each demo model, production on 1; no periodic rescan (the admin API
    rescans itself, and a test of POST /admin/reload needs the change left to it)."""
    train_demo(models_dir)
    return Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "data",
        admin_token=TOKEN,
        reload_interval_seconds=0,
    )


@pytest.fixture
def admin(admin_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(admin_settings), raise_server_exceptions=False) as client:
        yield client


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
    assert len(samples) == 12  # 4 actions x 3 outcomes, nothing else
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
    assert_error(
        admin.post("/admin/models/nope/promote", json={"version": 1}, headers=AUTH),
        404,
        "unknown_model",
    )
    assert_error(admin.post("/admin/models/nope/rollback", headers=AUTH), 404, "unknown_model")
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


def test_a_body_that_is_not_json_is_400(admin: TestClient) -> None:
    response = admin.post(
        PROMOTE, content=b"{", headers=AUTH | {"Content-Type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")


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
