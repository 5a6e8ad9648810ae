"""Dockerfile and docker-compose.yml, checked without a Docker engine.

They are parsed and held to the files they mount and the settings they give `steward serve`;
then the image's own command and health check run here, with its environment, as they would in
the container.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from server import STEWARD, free_port, serving

from app.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).parent.parent


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    pairs = []
    for line in lines:
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def instruction(name: str) -> str:
    (value,) = [rest for key, rest in dockerfile() if key == name]
    return value


def image_env() -> dict[str, str]:
    env = {}
    for key, rest in dockerfile():
        if key == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
    return env


def image_command() -> list[str]:
    command: list[str] = json.loads(instruction("CMD"))
    return command


def image_healthcheck() -> list[str]:
    check: list[str] = json.loads(instruction("HEALTHCHECK").split("CMD", 1)[1])
    return check


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def mounts(service: str) -> dict[str, str]:
    """host source -> container path for a service's volumes (read-only flags dropped)."""
    return {
        volume.split(":")[0]: volume.split(":")[1]
        for volume in compose()["services"][service]["volumes"]
    }


def without_steward_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


@pytest.fixture
def image_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings `steward serve` reads in the container: the image's ENV, nothing else."""
    for key in os.environ:
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in image_env().items():
        monkeypatch.setenv(key, value)
    return load_settings()


def test_image_basics(image_settings: Settings) -> None:
    assert instruction("FROM").startswith("python:3.11-slim")
    assert instruction("USER") == "steward"
    assert any("useradd --system" in rest for key, rest in dockerfile() if key == "RUN")
    order = [f"{k} {r}" for k, r in dockerfile()]
    dependencies = next(i for i, s in enumerate(order) if "pip install -r requirements.txt" in s)
    source = next(i for i, s in enumerate(order) if s.startswith("COPY app"))
    assert order.index("COPY pyproject.toml ./") < dependencies < source, "deps layer before source"
    assert "/healthz" in " ".join(image_healthcheck())
    assert f"EXPOSE {image_settings.port}" in order


def test_image_runs_steward_serve_configured_by_its_settings_alone() -> None:
    """Trains the demo models if missing, then `exec steward serve` with no option: every
    STEWARD_* variable applies (an option would override one), and exec makes the server
    PID 1, the process SIGTERM reaches."""
    shell, flag, script = image_command()
    assert (shell, flag) == ("sh", "-c")
    steps = [shlex.split(step) for step in script.split("&&")]
    assert steps == [["steward", "train", "demo", "--if-missing"], ["exec", "steward", "serve"]]


def test_image_configuration_is_steward_settings(image_settings: Settings) -> None:
    env = image_env()
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert {key for key in env if key.startswith(ENV_PREFIX)} <= fields
    (volume,) = json.loads(instruction("VOLUME"))
    assert image_settings.models_dir == Path(volume) / "models"
    assert image_settings.data_dir == Path(volume) / "data"
    assert image_settings.host == "0.0.0.0"  # reachable from outside the container
    assert image_settings.port == Settings.model_fields["port"].default  # spelled out for:
    assert "os.environ['STEWARD_PORT']" in image_healthcheck()[-1]  # follows it when set at run


def test_compose_wires_the_real_files(image_settings: Settings) -> None:
    services = compose()["services"]
    assert set(services) == {"steward", "prometheus", "grafana", "postgres"}
    assert services["postgres"]["profiles"] == ["postgres"]
    assert set(compose()["volumes"]) == {
        "steward-data", "prometheus-data", "grafana-data", "postgres-data",
    }  # fmt: skip

    steward = services["steward"]
    assert steward["build"] == "."
    assert steward["ports"] == [f"{image_settings.port}:{image_settings.port}"]
    assert steward["healthcheck"]["test"] == ["CMD", *image_healthcheck()]
    (volume,) = json.loads(instruction("VOLUME"))
    assert mounts("steward")["steward-data"] == volume

    prometheus = services["prometheus"]
    flags = dict(flag.split("=", 1) for flag in prometheus["command"])
    config_dir = mounts("prometheus")["./prometheus"]
    config_path = Path(flags["--config.file"])
    assert str(config_path.parent) == config_dir
    config = yaml.safe_load((ROOT / "prometheus" / config_path.name).read_text())
    for rule_file in config["rule_files"]:
        assert (ROOT / "prometheus" / rule_file).is_file()
    (steward_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "steward"]
    assert steward_job["static_configs"][0]["targets"] == [f"steward:{image_settings.port}"]
    prometheus_port = flags["--web.listen-address"].rsplit(":", 1)[1]

    grafana = services["grafana"]
    grafana_mounts = mounts("grafana")
    assert grafana_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "steward.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == grafana_mounts["./grafana/dashboards"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert str(home.parent) == grafana_mounts["./grafana/dashboards"]
    assert (ROOT / "grafana" / "dashboards" / home.name).is_file()
    datasource = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_image_command_and_healthcheck_run_here(tmp_path: Path) -> None:
    """The container's CMD and HEALTHCHECK, run as they are with the image's environment (its
    volume and port moved here): the demo models are trained, the server takes its address
    from the settings, and SIGTERM reaches it."""
    port = free_port()
    (volume,) = json.loads(instruction("VOLUME"))
    env = without_steward_variables() | {
        key: value.replace(volume, str(tmp_path / "volume"))
        for key, value in image_env().items()
        if key.startswith(ENV_PREFIX)
    }
    env |= {"STEWARD_PORT": str(port), "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    log = tmp_path / "cmd.log"
    with serving(image_command(), port=port, env=env, log=log, ready="/healthz") as served:
        check = image_healthcheck()
        assert check[0] == "python"
        result = subprocess.run([sys.executable, *check[1:]], env=env, capture_output=True)
        assert result.returncode == 0, result.stderr
        assert httpx2.get(f"{served.url}/readyz").status_code == 200
        names = [m["name"] for m in httpx2.get(f"{served.url}/models").json()]
        program = Path(f"/proc/{served.process.pid}/cmdline").read_bytes().split(b"\0")
        assert program[-3:] == [str(STEWARD).encode(), b"serve", b""]  # exec: not sh, PID 1
    assert names == ["breast-cancer", "diabetes", "iris"]  # trained on first start
    assert (tmp_path / "volume" / "models" / "iris" / "1").is_dir()
    assert (tmp_path / "volume" / "data" / "steward.db").is_file()
    output = log.read_text()
    assert f"Uvicorn running on http://0.0.0.0:{port} " in output  # STEWARD_HOST, STEWARD_PORT
    assert "Application shutdown complete" in output, output  # SIGTERM reached the server


@pytest.mark.parametrize("ignored", ["models", "data", ".venv", ".git", "tests", "deploy"])
def test_build_context_leaves_out_generated_files(ignored: str) -> None:
    assert ignored in (ROOT / ".dockerignore").read_text().split()
