"""Start-up faults through a real `steward serve`: a missing artifact, a corrupt one (changed
after registration, or garbled with its checksum updated), a bad aliases.json and model folders
that cannot be read (a dangling symlink, a symlink loop: as root, chmod stops nothing, a link
stops everyone). The other models serve; each problem is named in /readyz, in one log line and
in ``steward_model_refused``; a folder that reads again is picked up while serving.
"""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from helpers import IRIS_SETOSA, wait_until
from prometheus_client.parser import text_string_to_metric_families
from server import STEWARD, Server, free_port, serving

from app.aliases import ALIASES
from app.artifacts import ARTIFACT, METADATA, read_metadata, sha256_bytes

EXPECTED = {
    "diabetes": "load_error",  # the artifact file is gone
    "breast-cancer": "checksum_mismatch",  # changed after registration
    "garbled": "load_error",  # garbled, its sha256 updated to match: the checksum passes
    "flowers": "aliases_unreadable",
    "gone": "folder_unreadable",  # a dangling symlink
    "loop": "folder_unreadable",  # a symlink to itself
}


def _break(models: Path, tmp_path: Path) -> None:
    (models / "diabetes" / "1" / ARTIFACT).unlink()
    tampered = models / "breast-cancer" / "1" / ARTIFACT
    tampered.write_bytes(tampered.read_bytes()[:-10])
    shutil.copytree(models / "iris", models / "garbled")
    version = models / "garbled" / "1"
    garbage = b"\x80\x04 not a pickle " * 8
    (version / ARTIFACT).write_bytes(garbage)
    metadata = read_metadata(models, "garbled", 1).model_copy(
        update={"name": "garbled", "sha256": sha256_bytes(garbage)}
    )
    (version / METADATA).write_text(metadata.model_dump_json())
    shutil.copytree(models / "iris", models / "flowers")
    (models / "flowers" / ALIASES).write_text('{"production": ')
    (models / "gone").symlink_to(tmp_path / "release-that-went-away")
    (models / "loop").symlink_to(models / "loop")


@pytest.fixture
def broken(tmp_path: Path, demo_models: Path) -> Iterator[Server]:
    models = tmp_path / "models"
    shutil.copytree(demo_models, models)
    _break(models, tmp_path)
    env = os.environ | {
        "STEWARD_MODELS_DIR": str(models),
        "STEWARD_DATA_DIR": str(tmp_path / "data"),
        "STEWARD_RELOAD_INTERVAL_SECONDS": "0.2",
    }
    port = free_port()
    argv: list[str | Path] = [STEWARD, "serve", "--port", str(port)]
    with serving(argv, port=port, env=env, log=tmp_path / "server.log", ready="/readyz") as served:
        yield served


def _refused_series(url: str) -> dict[tuple[str, str], float]:
    text = httpx2.get(url + "/metrics", timeout=10).text
    return {
        (sample.labels["model"], sample.labels["reason"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "steward_model_refused"
    }


def test_broken_models_are_named_everywhere_and_the_others_serve(broken: Server) -> None:
    with httpx2.Client(base_url=broken.url, timeout=10) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        report = ready.json()
        assert report["status"] == "degraded"
        assert report["models"] == {"iris": 1}
        assert {p["component"]: p["reason"] for p in report["degraded"]} == {
            f"model:{name}": reason for name, reason in EXPECTED.items()
        }
        response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
        assert response.status_code == 200
        assert response.json()["predictions"][0]["prediction"] == "setosa"
        for name in EXPECTED:
            refused = http.post(f"/predict/{name}", json={"instances": [IRIS_SETOSA]})
            assert refused.status_code == 503, (name, refused.text)
            assert refused.json()["error"]["code"] == "model_unavailable"
    assert _refused_series(broken.url) == dict.fromkeys(EXPECTED.items(), 1.0)
    log = broken.log.read_text().splitlines()
    for name, reason in EXPECTED.items():
        lines = [line for line in log if f"{name}: refused ({reason})" in line]
        assert len(lines) == 1, (name, log)
        assert "ERROR" in lines[0]


def test_a_model_folder_that_reads_again_is_served_without_a_restart(
    broken: Server, tmp_path: Path
) -> None:
    assert _refused_series(broken.url)[("gone", "folder_unreadable")] == 1
    models = tmp_path / "models"
    target = tmp_path / "release-that-went-away"  # the link's target comes back
    shutil.copytree(models / "iris" / "1", target / "1")
    metadata = read_metadata(models, "iris", 1).model_copy(update={"name": "gone"})
    (target / "1" / METADATA).write_text(metadata.model_dump_json())
    (target / ALIASES).write_text('{"production": 1}')

    def serves() -> bool:
        return "gone" in httpx2.get(broken.url + "/readyz", timeout=10).json()["models"]

    assert wait_until(serves, seconds=30), broken.log.read_text()
    with httpx2.Client(base_url=broken.url, timeout=10) as http:
        response = http.post("/predict/gone", json={"instances": [IRIS_SETOSA]})
        assert response.status_code == 200, response.text
        degraded = {p["component"] for p in http.get("/readyz").json()["degraded"]}
    assert "model:gone" not in degraded
    assert "model:loop" in degraded
    assert ("gone", "folder_unreadable") not in _refused_series(broken.url)


NOBODY = 65534  # the unprivileged user the server runs as here, as in the Dockerfile


@pytest.fixture
def unprivileged(demo_models: Path) -> Iterator[tuple[Server, Path]]:
    """A real `steward serve` run as an unprivileged user (root reads a mode-000 folder
    anyway), on a registry whose diabetes folder is mode 000. Its folders live under /tmp, not
    tmp_path: pytest's base folder is root's alone, and the server must reach them."""
    as_nobody = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    tried = subprocess.run([*as_nobody, STEWARD, "--version"], capture_output=True, text=True)
    if tried.returncode != 0:  # a checkout under a folder only root may enter (mktemp -d's 0700)
        reason = (tried.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"an unprivileged user cannot run this checkout's steward: {reason}")
    base = Path(tempfile.mkdtemp(prefix="steward-unprivileged-"))
    try:
        models, data = base / "models", base / "data"
        shutil.copytree(demo_models, models)
        data.mkdir()
        for path in (base, *base.rglob("*")):
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        base.chmod(0o755)
        (models / "diabetes").chmod(0o000)
        env = os.environ | {
            "STEWARD_MODELS_DIR": str(models),
            "STEWARD_DATA_DIR": str(data),
            "STEWARD_RELOAD_INTERVAL_SECONDS": "0.2",
        }
        port = free_port()
        argv: list[str | Path] = [
            *as_nobody,
            *(STEWARD, "serve", "--port", str(port)),
        ]
        log = base / "server.log"
        with serving(argv, port=port, env=env, log=log, ready="/readyz") as served:
            yield served, models
    finally:
        for path in (base / "models").glob("*"):
            path.chmod(0o755)  # so that root's rmtree below, and a reader of the log, get in
        shutil.rmtree(base, ignore_errors=True)


def _degraded(url: str) -> dict[str, str]:
    report = httpx2.get(url + "/readyz", timeout=10).json()
    return {p["component"]: p["reason"] for p in report["degraded"]}


def test_a_model_folder_the_server_cannot_list_is_refused_and_the_others_serve(
    unprivileged: tuple[Server, Path],
) -> None:
    server, models = unprivileged
    with httpx2.Client(base_url=server.url, timeout=10) as http:
        report = http.get("/readyz").json()
        assert report["models"] == {"iris": 1, "breast-cancer": 1}, report
        assert _degraded(server.url) == {"model:diabetes": "folder_unreadable"}
        response = http.post("/predict/iris", json={"instances": [IRIS_SETOSA]})
        assert response.status_code == 200, response.text
        refused = http.post("/predict/diabetes", json={"instances": [{"age": 0.0}]})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "model_unavailable"
    assert _refused_series(server.url) == {("diabetes", "folder_unreadable"): 1.0}
    lines = [line for line in server.log.read_text().splitlines() if "folder_unreadable" in line]
    assert len(lines) == 1, server.log.read_text()
    assert "diabetes: refused (folder_unreadable)" in lines[0]

    # A folder that becomes unlistable while serving: the rescan goes on (diabetes is picked
    # up below), the model is named, its loaded version serves on.
    (models / "breast-cancer").chmod(0o000)
    assert wait_until(lambda: "model:breast-cancer" in _degraded(server.url), seconds=30)
    assert _degraded(server.url)["model:breast-cancer"] == "folder_unreadable"
    assert _refused_series(server.url)[("breast-cancer", "folder_unreadable")] == 1.0

    # Both read again: diabetes is loaded and both refusals clear, without a restart.
    (models / "diabetes").chmod(0o755)
    (models / "breast-cancer").chmod(0o755)
    assert wait_until(lambda: not _degraded(server.url), seconds=30), server.log.read_text()
    report = httpx2.get(server.url + "/readyz", timeout=10).json()
    assert report["models"] == {"iris": 1, "breast-cancer": 1, "diabetes": 1}
    assert _refused_series(server.url) == {}
