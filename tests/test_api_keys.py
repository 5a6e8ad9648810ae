"""Optional API keys of /predict and /feedback: off by default, 401 in the one shape without a
valid key, never echoed, separate from the admin token, documented in /openapi.json."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient
from helpers import ADMIN_AUTH, ADMIN_TOKEN, IRIS_SETOSA, metric, predict, prediction_ids
from server import free_port, serving

from app.errors import InvalidSettings
from app.main import create_app
from app.settings import Settings, load_settings

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"
BODY = {"instances": [IRIS_SETOSA]}


@pytest.fixture
def keyed(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    settings = Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "data",
        api_keys=f"{KEY_A}, {KEY_B}",  # as the environment gives it
        admin_token=ADMIN_TOKEN,
        default_model="iris",
        reload_interval_seconds=0,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def refused(response: object, reason: str) -> None:
    assert getattr(response, "status_code", None) == 401
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "unauthorized"
    assert error["message"].startswith(reason)


def test_keys_are_off_by_default(client: TestClient) -> None:
    prediction_ids(predict(client, "iris", IRIS_SETOSA))
    schema = client.get("/openapi.json").json()
    assert "security" not in schema["paths"]["/predict/{model}"]["post"]
    assert set(schema["components"]["securitySchemes"]) == {"HTTPBearer"}  # the admin token


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": KEY_A},
        {"X-API-Key": KEY_B},
        {"Authorization": f"Bearer {KEY_B}"},
        {"Authorization": f"bearer {KEY_A}"},
        # X-API-Key is read first; a wrong bearer beside it does not matter.
        {"X-API-Key": KEY_A, "Authorization": "Bearer nope"},
    ],
)
def test_a_listed_key_opens_predict_and_feedback(
    keyed: TestClient, headers: dict[str, str]
) -> None:
    (pid,) = prediction_ids(keyed.post("/predict/iris", json=BODY, headers=headers))
    prediction_ids(keyed.post("/predict", json=BODY, headers=headers))
    answer = keyed.post(
        "/feedback", json={"prediction_id": pid, "ground_truth": "setosa"}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "accepted"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing API key"),
        ({"X-API-Key": ""}, "missing API key"),
        ({"Authorization": "Bearer"}, "missing API key"),
        ({"Authorization": f"Basic {KEY_A}"}, "missing API key"),
        ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, "wrong API key"),  # the admin token
        ({"X-API-Key": KEY_A[:-1]}, "wrong API key"),
        ({"X-API-Key": KEY_A + "0"}, "wrong API key"),
        ({"X-API-Key": KEY_A.upper()}, "wrong API key"),
        ({"X-API-Key": f"{KEY_A},{KEY_B}"}, "wrong API key"),
        ({"X-API-Key": "k" * 100_000}, "wrong API key"),
        # X-API-Key is read first: a valid bearer beside a wrong one does not open.
        ({"X-API-Key": "wrong-key-0123456789", "Authorization": f"Bearer {KEY_A}"}, "wrong"),
    ],
)
def test_no_valid_key_is_401_without_echo(
    keyed: TestClient, headers: dict[str, str], reason: str
) -> None:
    # The keys sent: each value without its scheme ("Bearer" alone sends none).
    given = [v.split(" ", 1)[-1] for v in headers.values() if v not in ("", "Bearer")]
    for path in ("/predict/iris", "/predict", "/predict/no-such-model", "/feedback"):
        response = keyed.post(path, json=BODY, headers=headers)
        refused(response, reason)
        assert not [key for key in given if key and key in response.text]
    assert keyed.get("/readyz").status_code == 200


def test_a_latin1_key_is_401_not_500(keyed: TestClient) -> None:
    response = keyed.post("/predict/iris", json=BODY, headers=[(b"x-api-key", b"\xff\xfe" * 10)])
    refused(response, "wrong API key")


def test_an_api_key_does_not_open_admin(keyed: TestClient) -> None:
    response = keyed.post("/admin/reload", headers={"Authorization": f"Bearer {KEY_A}"})
    assert response.status_code == 401
    assert keyed.post("/admin/reload", headers=ADMIN_AUTH).status_code == 200


def test_refusals_are_counted_by_status(keyed: TestClient) -> None:
    keyed.post("/predict/iris", json=BODY)
    keyed.post("/predict/iris", json=BODY, headers={"X-API-Key": "wrong-key-0123456789"})
    keyed.post("/feedback", json={})
    keyed.post("/predict/iris", json=BODY, headers={"X-API-Key": KEY_A})
    counted = {
        (route, status): metric(
            keyed, "steward_http_requests_total", method="POST", route=route, status=status
        )
        for route, status in (("/predict/{model}", "401"), ("/feedback", "401"))
    }
    assert counted == {("/predict/{model}", "401"): 2.0, ("/feedback", "401"): 1.0}
    ok = metric(
        keyed, "steward_http_requests_total", method="POST", route="/predict/{model}", status="200"
    )
    assert ok == 1.0


def test_open_routes_stay_open(keyed: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/models", "/models/iris", "/metrics", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path


def test_openapi_documents_the_schemes(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "An API key (STEWARD_API_KEYS or STEWARD_API_KEYS_FILE).",
    }
    assert schemes["ApiKeyBearer"]["scheme"] == "bearer"
    either: list[dict[str, list[str]]] = [{"ApiKeyHeader": []}, {"ApiKeyBearer": []}]
    for path in ("/predict/{model}", "/predict", "/predict/iris", "/feedback"):
        operation = schema["paths"][path]["post"]
        assert operation["security"] == either, path
        assert "401" in operation["responses"], path
    assert "security" not in schema["paths"]["/models"]["get"]


def test_keys_from_a_file(tmp_path: Path, models_dir: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# rotated 2026-12-01\n{KEY_A}\n\n  {KEY_B}  \n", encoding="utf-8")
    settings = Settings(models_dir=models_dir, data_dir=tmp_path / "data", api_keys_file=keys)
    assert [k.get_secret_value() for k in settings.api_key_secrets] == [KEY_A, KEY_B]
    with TestClient(create_app(settings)) as client:
        refused(client.post("/predict/iris", json=BODY), "missing API key")
        prediction_ids(client.post("/predict/iris", json=BODY, headers={"X-API-Key": KEY_B}))


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"api_keys": "short-key"}, "STEWARD_API_KEYS: key 1 is shorter than 16 characters"),
        ({"api_keys": f"{KEY_A},tiny"}, "STEWARD_API_KEYS: key 2 is shorter than 16 characters"),
        ({"api_keys": "key with a space 0123"}, "STEWARD_API_KEYS: key 1 must be printable"),
        ({"api_keys": "clé-0123456789abcdef"}, "STEWARD_API_KEYS: key 1 must be printable"),
    ],
)
def test_bad_keys_are_refused_without_naming_them(
    tmp_path: Path, values: dict[str, str], problem: str
) -> None:
    with pytest.raises(InvalidSettings) as refusal:
        load_settings(models_dir=tmp_path, **values)
    assert problem in str(refusal.value)
    for key in values["api_keys"].split(","):
        assert key not in str(refusal.value)


def test_bad_key_files_are_refused(tmp_path: Path) -> None:
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.write_text("# nothing yet\n\n", encoding="utf-8")
    with pytest.raises(InvalidSettings, match=r"STEWARD_API_KEYS_FILE: .* holds no key"):
        load_settings(models_dir=tmp_path, api_keys_file=empty)
    with pytest.raises(InvalidSettings, match="STEWARD_API_KEYS_FILE: cannot read"):
        load_settings(models_dir=tmp_path, api_keys_file=missing)
    both = {"api_keys": KEY_A, "api_keys_file": empty}
    with pytest.raises(InvalidSettings, match="API_KEYS and STEWARD_API_KEYS_FILE are both set"):
        load_settings(models_dir=tmp_path, **both)


@pytest.fixture
def keyed_under_api(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    """The keyed app behind a prefix (``--root-path /api``): Starlette routes on the path
    without it."""
    settings = Settings(
        models_dir=models_dir,
        data_dir=tmp_path / "data",
        api_keys=KEY_A,
        default_model="iris",
        reload_interval_seconds=0,
        max_concurrency=1,
    )
    app = create_app(settings)
    with TestClient(app, root_path="/api", raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    "path",
    [
        "/api/predict/iris",
        "/api/predict",
        "/api/feedback",
        "/api/predict/iris/",
        "/api/%70redict/iris",
        "/api/predict/%69ris",
        "/api//predict/iris",
        "/api/predict//iris",
        "//api/predict/iris",
        "/predict/iris",
    ],
)
@pytest.mark.parametrize("method", ["POST", "HEAD", "OPTIONS", "GET", "PUT"])
def test_no_spelling_of_a_guarded_path_predicts_without_a_key(
    keyed_under_api: TestClient, path: str, method: str
) -> None:
    """Under a root path, with a slash added or doubled, percent-encoded, or another method:
    401 without a key, or not served at all; never a prediction."""
    answer = keyed_under_api.request(method, path, json=BODY, follow_redirects=True)
    assert answer.status_code in (401, 404, 405), (answer.status_code, answer.text)
    assert b"prediction_id" not in answer.content
    # With the key the same request is served or not found, as routing says: the key check
    # refused it above, not something else.
    if method == "POST" and answer.status_code == 401:
        keyed = keyed_under_api.request(
            method, path, json=BODY, headers={"X-API-Key": KEY_A}, follow_redirects=True
        )
        assert keyed.status_code in (200, 404, 405, 422), keyed.text


def test_a_root_path_request_is_within_the_concurrency_limit(keyed_under_api: TestClient) -> None:
    """The limit counts requests by their route path: under /api they are counted too."""
    answer = keyed_under_api.post("/api/predict/iris", json=BODY, headers={"X-API-Key": KEY_A})
    prediction_ids(answer)
    refused_before = metric(
        keyed_under_api, "steward_http_refused_requests_total", reason="overloaded"
    )
    limit = keyed_under_api.app.middleware_stack  # type: ignore[attr-defined]
    while not hasattr(limit, "in_flight"):
        limit = limit.app
    limit.in_flight = limit.limit  # the one slot taken, as by a request still running
    try:
        busy = keyed_under_api.post("/api/predict/iris", json=BODY, headers={"X-API-Key": KEY_A})
    finally:
        limit.in_flight = 0
    assert busy.status_code == 503, busy.text
    assert busy.json()["error"]["code"] == "overloaded"
    after = metric(keyed_under_api, "steward_http_refused_requests_total", reason="overloaded")
    assert after == refused_before + 1


def test_uvicorn_with_a_root_path_checks_the_key(tmp_path: Path, demo_models: Path) -> None:
    """A real ``uvicorn --factory --root-path /api``: it gives the app the path with the prefix,
    which Starlette strips to route; every request to /predict still needs the key."""
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(demo_models),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
        "STEWARD_API_KEYS": KEY_A,
    }
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app"]
    argv += ["--root-path", "/api", "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "server.log"
    with (
        serving(argv, port=port, env=env, log=log, ready="/readyz") as run,
        httpx2.Client(base_url=run.url, timeout=10) as http,
    ):
        for path in ("/predict/iris", "/api/predict/iris", "/predict/iris/", "/%70redict/iris"):
            answer = http.post(path, json=BODY)
            assert answer.status_code in (401, 404), (path, answer.text)
            assert b"prediction_id" not in answer.content
        prediction_ids(http.post("/predict/iris", json=BODY, headers={"X-API-Key": KEY_A}))
