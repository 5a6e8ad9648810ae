"""The pod deploy/kubernetes renders, run here: `steward serve` with the rendered environment,
its registry mounted read-only (a bind mount: needs root, else skipped), on a real PostgreSQL,
scraped by a real Prometheus that answers the KEDA queries; and the CLI on such a registry."""

import math
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
from helpers import (
    ADMIN_TOKEN,
    IRIS_SETOSA,
    assert_error,
    postgres_database,
    postgres_url,
    read_only,
    wait_until,
)
from manifests import SECRETS, Objects, environment, keda_queries, objects, with_secrets
from server import STEWARD
from stack import instant_query as query
from stack import scraped


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Objects:
    """The objects of overlays/postgres-keda."""
    tree = with_secrets(tmp_path_factory.mktemp("kubernetes") / "kubernetes")
    return objects(tree / "overlays" / "postgres-keda")


def wait_for(condition: Callable[[], bool], what: str) -> None:
    assert wait_until(condition, seconds=60, interval=0.25), f"timed out waiting for {what}"


def predict(url: str) -> None:
    response = httpx2.post(f"{url}/predict/iris", json={"instances": [IRIS_SETOSA]}, timeout=10)
    assert response.status_code == 200, response.text


def test_the_rendered_pod_serves_from_a_read_only_registry_and_scales_on_real_metrics(
    fleet: Objects, demo_models: Path, tmp_path: Path
) -> None:
    """`steward serve` with the postgres-keda overlay's environment (paths mapped here, the
    admin token from its file, a real PostgreSQL), its registry read-only: ready, predicts,
    refuses every alias change in the one error shape and stays ready; Prometheus answers the
    KEDA queries: 0 p99 while idle, a request rate and a p99 once it serves."""
    env = environment(fleet)
    shutil.copytree(demo_models, tmp_path / "models")
    aliases = (tmp_path / "models" / "iris" / "aliases.json").read_bytes()
    (tmp_path / "admin-token").write_text(SECRETS["base/secrets/admin-token"])
    with (
        postgres_database("k8s") as database,
        read_only(tmp_path / "models"),
    ):
        env |= {
            "STEWARD_HOST": "127.0.0.1",
            "STEWARD_MODELS_DIR": str(tmp_path / "models"),
            "STEWARD_DATA_DIR": str(tmp_path / "data"),
            "STEWARD_ADMIN_TOKEN_FILE": str(tmp_path / "admin-token"),
            "STEWARD_DATABASE_URL": postgres_url(database),
        }
        (tmp_path / "data").mkdir()
        queries = keda_queries(fleet)
        with scraped(tmp_path, os.environ | env) as (steward, prometheus):
            wait_for(lambda: query(prometheus.url, 'up{job="steward"}') != [], "a scrape")
            assert query(prometheus.url, queries["requests-per-replica"]) == []
            (idle,) = query(prometheus.url, queries["p99-latency"])
            assert (idle["metric"], idle["value"][1]) == ({}, "0")

            # The first request creates the series; Prometheus sees them, then the rest make
            # the rates.
            predict(steward.url)
            wait_for(lambda: query(prometheus.url, queries["requests-per-replica"]) != [], "series")
            for _ in range(20):
                predict(steward.url)
            changes = [
                ("POST", "promote", {"version": 1}),
                ("POST", "rollback", None),
                ("PUT", "traffic", {"mode": "none"}),
                ("PUT", "auto-rollback", {"enabled": True}),
            ]
            for method, action, body in changes:
                answer = httpx2.request(
                    method,
                    f"{steward.url}/admin/models/iris/{action}",
                    json=body,
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                error = assert_error(answer, 409, "registry_read_only")
                assert error["details"] == [
                    {
                        "field": "registry",
                        "message": "change aliases where the registry is writable "
                        "(docs/operations.md, Kubernetes)",
                    }
                ], action
                assert str(tmp_path) not in answer.text
            assert httpx2.get(f"{steward.url}/readyz").status_code == 200

            def scaled() -> bool:
                return (
                    all(query(prometheus.url, q) for q in queries.values())
                    and float(query(prometheus.url, queries["p99-latency"])[0]["value"][1]) > 0
                )

            wait_for(scaled, "the KEDA queries to see the predictions")
            for name, expr in queries.items():
                (sample,) = query(prometheus.url, expr)
                assert sample["metric"] == {}, name
                value = float(sample["value"][1])
                assert math.isfinite(value), name
                assert value > 0, name
    assert (tmp_path / "models" / "iris" / "aliases.json").read_bytes() == aliases


def test_the_cli_on_a_read_only_registry_says_so_in_one_line(
    demo_models: Path, tmp_path: Path
) -> None:
    """`steward promote` where the registry is mounted read-only (a replica's pod): exit 1, one
    line, nothing changed. The registry writer's read-write mount is where it works."""
    shutil.copytree(demo_models, tmp_path / "models")
    aliases = (tmp_path / "models" / "iris" / "aliases.json").read_bytes()
    with read_only(tmp_path / "models"):
        for command in (["promote", "iris", "1"], ["rollback", "iris"]):
            done = subprocess.run(
                [STEWARD, *command, "--models-dir", str(tmp_path / "models")],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert (done.returncode, done.stdout) == (1, "")
            assert done.stderr == (
                "steward: error: the model registry is read-only here: nothing was changed\n"
            )
    assert (tmp_path / "models" / "iris" / "aliases.json").read_bytes() == aliases
