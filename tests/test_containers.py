"""Dockerfile and docker-compose.yml, checked without a Docker engine.

They are parsed and held to the files they mount and the app they start; then the image's own
command and health check run here, as they would in the container.
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
from server import free_port, serving

from app.settings import Settings

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


def listen_port() -> int:
    words = image_command()[-1].split()
    return int(words[words.index("--port") + 1])


def test_image_basics() -> None:
    assert instruction("FROM").startswith("python:3.11-slim")
    assert instruction("USER") == "steward"
    assert any("useradd --system" in rest for key, rest in dockerfile() if key == "RUN")
    order = [f"{k} {r}" for k, r in dockerfile()]
    dependencies = next(i for i, s in enumerate(order) if "pip install -r requirements.txt" in s)
    source = next(i for i, s in enumerate(order) if s.startswith("COPY app"))
    assert order.index("COPY pyproject.toml ./") < dependencies < source, "deps layer before source"
    assert "/healthz" in " ".join(image_healthcheck())
    assert f"EXPOSE {listen_port()}" in order


def test_image_serves_the_app_factory() -> None:
    command = image_command()[-1]
    assert "exec uvicorn --factory app.main:create_app" in command
    assert "--host 0.0.0.0" in command


def test_image_configuration_is_steward_settings_on_the_volume() -> None:
    env = image_env()
    (volume,) = json.loads(instruction("VOLUME"))
    fields = {f"STEWARD_{name.upper()}" for name in Settings.model_fields}
    for key, value in env.items():
        if key.startswith("STEWARD_"):
            assert key in fields, key
            assert value.startswith(volume + "/"), key
    assert {"STEWARD_MODELS_DIR", "STEWARD_DATA_DIR"} <= set(env)


def test_compose_wires_the_real_files() -> None:
    services = compose()["services"]
    assert set(services) == {"steward", "prometheus", "grafana", "postgres"}
    assert services["postgres"]["profiles"] == ["postgres"]
    assert set(compose()["volumes"]) == {
        "steward-data", "prometheus-data", "grafana-data", "postgres-data",
    }  # fmt: skip

    steward = services["steward"]
    assert steward["build"] == "."
    assert steward["ports"] == [f"{listen_port()}:{listen_port()}"]
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
    assert steward_job["static_configs"][0]["targets"] == [f"steward:{listen_port()}"]
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
    """The container's CMD and HEALTHCHECK, run as they are, on a free port."""
    port = free_port()
    volume = tmp_path / "var-lib-steward"
    env = os.environ | {
        key: value.replace(json.loads(instruction("VOLUME"))[0], str(volume))
        for key, value in image_env().items()
        if key.startswith("STEWARD_")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    command = [part.replace(str(listen_port()), str(port)) for part in image_command()]
    with serving(command, port=port, env=env, log=tmp_path / "cmd.log", ready="/healthz") as served:
        url = served.url
        check = [part.replace(str(listen_port()), str(port)) for part in image_healthcheck()]
        assert check[0] == "python"
        result = subprocess.run([sys.executable, *check[1:]], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert httpx2.get(f"{url}/readyz").status_code == 200
        names = [m["name"] for m in httpx2.get(f"{url}/models").json()]
    assert names == ["breast-cancer", "diabetes", "iris"]  # trained on first start
    assert (volume / "models" / "iris" / "1").is_dir()
    assert (volume / "data" / "steward.db").is_file()


@pytest.mark.parametrize("ignored", ["models", "data", ".venv", ".git", "tests"])
def test_build_context_leaves_out_generated_files(ignored: str) -> None:
    assert ignored in (ROOT / ".dockerignore").read_text().split()
