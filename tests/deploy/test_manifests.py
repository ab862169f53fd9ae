"""The kustomize manifests under deploy/: every kustomization builds with the pinned kubectl,
its built-in kinds pass kubernetes-validate --strict for the oldest and newest Kubernetes we
support on AKS, its Prometheus-operator kinds pass the operator's schemas (and reject unknown
fields), and the objects say what the agent needs: settings that exist, spot placement, the
security context, probes, resources, network policy, scraping and rules copied from their
single sources."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no stubs, no py.typed
import pytest
import yaml

from spotguard import __version__
from spotguard.config import Settings, load_settings, parse_taint
from spotguard.kube.nodes import taint_key
from spotguard.model import Kind
from tests.deploy.manifests import (
    AZURE_MONITOR_GROUP,
    CLUSTER_SCOPED_KINDS,
    DEPLOY,
    KUSTOMIZATIONS,
    PROMETHEUS_OPERATOR_GROUP,
    ROOT,
    Doc,
    all_containers,
    build,
    containers,
    find,
    group_of,
    is_custom_resource,
    kustomize,
    one,
    pod_spec,
    settings_env_names,
    validate_crds,
    workloads,
)

CONFIG = ROOT / "config" / "spotguard.yaml"
RELABEL = ROOT / "dashboards" / "relabel.yaml"
RULES = ROOT / "dashboards" / "alerts" / "spotguard.rules.yml"
NAMESPACE = "spotguard"
CONFIG_PATH = "/etc/spotguard/spotguard.yaml"
IMAGE = f"ghcr.io/spotguard/spotguard:{__version__}"
SPOT_LABEL = "kubernetes.azure.com/scalesetpriority"
UID = 65532  # the Dockerfile's USER
HTTP_PORT = 9464  # setting http_address's default
CHECKPOINT_PORT = 8471  # DESIGN.md, Contracts -> Pods
IMDS = "169.254.169.254/32"

#: The oldest and newest minor that kubernetes-validate bundles and AKS runs: 1.32 (an AKS
#: long-term-support version) and 1.37 (the newest schema bundled; an object valid for both ends
#: uses no field added or removed in between).
K8S_VERSIONS = ("1.32.0", "1.37.0")
#: Environment variables set in deploy/ that are not spotguard settings, each with its reason.
#: None so far: the image sets HOME and PYTHON* itself, in-cluster config needs no KUBECONFIG.
DOCUMENTED_NON_SETTINGS: dict[str, str] = {}

ALL = list(KUSTOMIZATIONS)
AGENT_OVERLAYS = ALL  # every kustomization carries the agent DaemonSet


def agent(name: str) -> Doc:
    return one(build(name), "DaemonSet", "spotguard")


def queue() -> Doc:
    return one(build("queue-mode"), "Deployment", "spotguard-queue")


def container(workload: Doc) -> Doc:
    (only,) = pod_spec(workload)["containers"]
    assert isinstance(only, dict)
    return only


def env_of(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


# --- 1. every kustomization builds ----------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_kustomization_builds(name: str) -> None:
    docs = build(name)
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()
        assert doc["metadata"].get("name"), doc


def test_no_kustomization_is_left_out() -> None:
    dirs = {p.parent for p in DEPLOY.rglob("kustomization.yaml")}
    assert dirs == set(KUSTOMIZATIONS.values())


# --- 2. built-in kinds: kubernetes-validate, strict -----------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", ALL)
def test_builtin_kinds_are_valid(name: str, version: str) -> None:
    checked = 0
    for doc in build(name):
        if is_custom_resource(doc):
            continue
        # Raises on any error; SchemaNotFoundError (an unknown kind) fails the test as well.
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_strict_validation_rejects_a_typo(version: str) -> None:
    daemonset = copy.deepcopy(agent("base"))
    spec = pod_spec(daemonset)
    spec["serviceAcountName"] = spec.pop("serviceAccountName")
    with pytest.raises(kubernetes_validate.ValidationError, match="serviceAcountName"):
        kubernetes_validate.validate(daemonset, version, strict=True)


def test_unknown_kind_is_not_a_pass() -> None:
    podmonitor = one(build("base"), "PodMonitor")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(podmonitor, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", ALL)
def test_every_object_is_validated(name: str) -> None:
    """Everything is either a built-in kind or one of the custom kinds validated below."""
    custom = {(group_of(d), d["kind"]) for d in build(name) if is_custom_resource(d)}
    assert custom <= {
        (PROMETHEUS_OPERATOR_GROUP, "PodMonitor"),
        (PROMETHEUS_OPERATOR_GROUP, "PrometheusRule"),
        (AZURE_MONITOR_GROUP, "PodMonitor"),
    }


# --- 3. Prometheus-operator kinds: the operator's schemas, plus unknown fields --------------


def _as_operator_kind(doc: Doc) -> Doc:
    """Azure's PodMonitor is the operator's with another API group (Azure's docs: "the only
    change required ... is the API group"); there is no published schema of its own, so it is
    validated with the operator's PodMonitor schema after swapping the group back."""
    if group_of(doc) == AZURE_MONITOR_GROUP:
        doc = {**doc, "apiVersion": f"{PROMETHEUS_OPERATOR_GROUP}/v1"}
    return doc


@pytest.fixture(scope="module")
def crd_verdicts() -> dict[tuple[str, str, str], dict[str, Any]]:
    """One node run for the custom resources of every kustomization (startup costs ~2 s)."""
    keyed = [
        ((name, d["kind"], d["metadata"]["name"]), _as_operator_kind(d))
        for name in ALL
        for d in build(name)
        if is_custom_resource(d)
    ]
    verdicts = validate_crds([doc for _, doc in keyed])
    return {key: verdict for (key, _), verdict in zip(keyed, verdicts, strict=True)}


@pytest.mark.parametrize("name", ALL)
def test_custom_resources_are_valid(
    name: str, crd_verdicts: dict[tuple[str, str, str], dict[str, Any]]
) -> None:
    mine = {key: v for key, v in crd_verdicts.items() if key[0] == name}
    expected = 1 if name == "managed-prometheus" else 2
    assert len(mine) >= expected
    assert all(v["ok"] for v in mine.values()), mine


def test_custom_resource_validation_can_fail() -> None:
    podmonitor = one(build("base"), "PodMonitor")
    wrong_type = copy.deepcopy(podmonitor)
    wrong_type["spec"]["podMetricsEndpoints"][0]["interval"] = 5
    unknown_field = copy.deepcopy(podmonitor)
    unknown_field["spec"]["podMetricsEndpoints"][0]["intervall"] = "5s"
    rule = copy.deepcopy(one(build("base"), "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["labelz"] = {"severity": "page"}
    bad_enum = copy.deepcopy(podmonitor)
    bad_enum["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "rewrite"
    unknown_kind = {**podmonitor, "kind": "PodMonitr"}
    verdicts = validate_crds([podmonitor, wrong_type, unknown_field, rule, bad_enum, unknown_kind])
    assert [v["ok"] for v in verdicts] == [True, False, False, False, False, False], verdicts
    assert any("interval" in e for e in verdicts[1]["errors"])
    assert any("intervall" in e for e in verdicts[2]["errors"])
    assert any("labelz" in e for e in verdicts[3]["errors"])
    assert any("no schema" in e for e in verdicts[5]["errors"])


# --- 4. environment: settings only ----------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_environment_names_settings(name: str) -> None:
    known = settings_env_names()
    for workload, c in all_containers(build(name)):
        for var in c.get("env", []):
            key = var["name"]
            where = f"{workload['kind']}/{workload['metadata']['name']} {key}"
            assert key in known or key in DOCUMENTED_NON_SETTINGS, f"{where}: not a setting"
            if key.startswith("SPOTGUARD_"):
                assert key in known, f"{where}: SPOTGUARD_ but not a setting"
        assert "envFrom" not in c, "envFrom hides which settings are set"


def _environ(docs: tuple[Doc, ...], c: Doc) -> dict[str, str]:
    """The container's environment as the kubelet would set it, from the rendered objects."""
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in find(docs, "ConfigMap")}
    environ: dict[str, str] = {}
    for var in c.get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            environ[var["name"]] = var["value"]
        elif "fieldRef" in source:
            environ[var["name"]] = f"downward-{source['fieldRef']['fieldPath']}"
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            assert ref["name"] in configmaps, f"{var['name']}: no ConfigMap {ref['name']}"
            environ[var["name"]] = configmaps[ref["name"]][ref["key"]]
        elif "secretKeyRef" in source:
            assert source["secretKeyRef"].get("optional") is True, var  # may be absent
        else:
            raise AssertionError(f"unexpected env source {var}")
    return environ


@pytest.mark.parametrize("name", ALL)
def test_settings_load_as_deployed(name: str) -> None:
    """The mounted file plus the environment is a valid configuration (exit 2 otherwise)."""
    docs = build(name)
    for _, c in all_containers(docs):
        settings = load_settings(CONFIG, _environ(docs, c))
        assert settings.cluster_name


# --- 5. policy ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_security_context(name: str) -> None:
    for workload in workloads(build(name)):
        spec = pod_spec(workload)
        pod_ctx = spec.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True
        assert pod_ctx.get("seccompProfile") == {"type": "RuntimeDefault"}
        if name != "host-network":
            assert not spec.get("hostNetwork"), workload["metadata"]["name"]
        assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
        assert not spec.get("hostPID")
        assert not spec.get("hostIPC")
        for c in containers(workload):
            ctx = c["securityContext"]
            assert ctx["runAsNonRoot"] is True
            assert ctx["runAsUser"] == UID
            assert ctx["runAsGroup"] == UID
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
            assert not ctx.get("privileged")
            assert all("hostPort" not in p for p in c.get("ports", []))


def test_host_network_overlay() -> None:
    spec = pod_spec(agent("host-network"))
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_dry_run_overlay() -> None:
    env = env_of(container(agent("dry-run")))
    assert env["SPOTGUARD_DRY_RUN"]["value"] == "true"
    assert "SPOTGUARD_DRY_RUN" not in env_of(container(agent("base")))


@pytest.mark.parametrize("name", AGENT_OVERLAYS)
def test_agent_runs_on_spot_nodes_only(name: str) -> None:
    spec = pod_spec(agent(name))
    required = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": SPOT_LABEL, "operator": "In", "values": ["spot"]}]}
    ]
    assert spec["priorityClassName"] == "system-node-critical"


def _tolerated(tolerations: list[Doc], key: str, value: str, effect: str) -> bool:
    """Kubernetes' ToleratesTaint."""
    for t in tolerations:
        if t.get("effect") not in (None, "", effect):
            continue
        if t.get("key") not in (None, "", key):
            continue
        if t.get("operator", "Equal") == "Exists" or t.get("value", "") == value:
            return True
    return False


@pytest.mark.parametrize("name", AGENT_OVERLAYS)
def test_agent_tolerates_spot_and_its_own_taints(name: str) -> None:
    tolerations = pod_spec(agent(name))["tolerations"]
    assert _tolerated(tolerations, SPOT_LABEL, "spot", "NoSchedule")
    for kind in Kind:  # spotguard.io/<kind>=<event id>:NoSchedule
        assert _tolerated(tolerations, taint_key(kind.value), "an-event-id", "NoSchedule"), kind
    queue_taint = parse_taint(Settings().queue_taint)
    assert _tolerated(tolerations, queue_taint.key, queue_taint.value, queue_taint.effect)
    # Nothing broader: a blanket toleration would also keep it on nodes being torn down.
    assert all(t.get("key") for t in tolerations)


def test_queue_mode_avoids_spot_nodes() -> None:
    deployment = queue()
    spec = pod_spec(deployment)
    required = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": SPOT_LABEL, "operator": "NotIn", "values": ["spot"]}]}
    ]
    assert not _tolerated(spec.get("tolerations", []), SPOT_LABEL, "spot", "NoSchedule")
    assert deployment["spec"]["replicas"] == 2
    assert spec["serviceAccountName"] == "spotguard-queue"
    assert container(deployment)["args"][0] == "queue"
    env = env_of(container(deployment))
    assert {"SPOTGUARD_EVENTS_QUEUE", "SPOTGUARD_POD_NAME", "SPOTGUARD_POD_NAMESPACE"} <= set(env)
    assert env["SPOTGUARD_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "SPOTGUARD_NODE_NAME" not in env
    budget = one(build("queue-mode"), "PodDisruptionBudget", "spotguard-queue")
    assert (
        budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    assert budget["spec"]["maxUnavailable"] == 1


def test_agent_environment() -> None:
    env = env_of(container(agent("base")))
    field = {
        key: var["valueFrom"]["fieldRef"]["fieldPath"]
        for key, var in env.items()
        if "fieldRef" in var.get("valueFrom", {})
    }
    assert field == {
        "SPOTGUARD_NODE_NAME": "spec.nodeName",
        "SPOTGUARD_POD_NAME": "metadata.name",
        "SPOTGUARD_POD_NAMESPACE": "metadata.namespace",
    }
    cluster = env["SPOTGUARD_CLUSTER_NAME"]["valueFrom"]["configMapKeyRef"]
    assert cluster["name"].startswith("spotguard-cluster-")  # generated: hash suffix
    secret = env["SPOTGUARD_SERVICEBUS_CONNECTION_STRING"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "spotguard-servicebus", "key": "connection-string", "optional": True}


@pytest.mark.parametrize("name", ALL)
def test_probes_and_port(name: str) -> None:
    for workload, c in all_containers(build(name)):
        assert c["ports"] == [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}]
        for probe, path in (
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            assert c[probe]["httpGet"] == {"path": path, "port": "http"}, (workload, probe)
        # Room for a slow start without being killed (cold import under CPU contention).
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


@pytest.mark.parametrize("name", ALL)
def test_resources(name: str) -> None:
    for _, c in all_containers(build(name)):
        assert c["resources"] == {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "128Mi"},  # no CPU limit: docs/footprint.md
        }


@pytest.mark.parametrize("name", ALL)
def test_image_and_command(name: str) -> None:
    for workload, c in all_containers(build(name)):
        assert c["image"] == IMAGE, workload["metadata"]["name"]
        assert c["args"][1:] == ["--config", CONFIG_PATH]
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["config"]["mountPath"] == str(Path(CONFIG_PATH).parent)
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        assert volumes["config"]["configMap"]["name"].startswith("spotguard-config-")
    assert container(agent(name))["args"][0] == "run"


def test_image_tag_is_the_version() -> None:
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert str(image["newTag"]) == __version__


@pytest.mark.parametrize("name", ALL)
def test_config_map_is_the_settings_file(name: str) -> None:
    docs = build(name)
    (configmap,) = [
        d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("spotguard-config-")
    ]
    assert configmap["data"] == {"spotguard.yaml": CONFIG.read_text(encoding="utf-8")}


def test_cluster_name_is_a_placeholder_until_merged(tmp_path: Path) -> None:
    (cluster,) = [
        d
        for d in find(build("base"), "ConfigMap")
        if d["metadata"]["name"].startswith("spotguard-cluster-")
    ]
    assert cluster["data"] == {"cluster_name": "change-me"}
    # What deploy/README.md tells operators to write.
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(DEPLOY / 'base', tmp_path)}]\n"  # must be relative
        "configMapGenerator:\n"
        "  - name: spotguard-cluster\n"
        "    namespace: spotguard\n"
        "    behavior: merge\n"
        "    literals: [cluster_name=prod-westeurope-1]\n"
    )
    docs = [d for d in yaml.safe_load_all(kustomize(tmp_path)) if d]
    env = env_of(container(one(docs, "DaemonSet", "spotguard")))
    name = env["SPOTGUARD_CLUSTER_NAME"]["valueFrom"]["configMapKeyRef"]["name"]
    assert one(docs, "ConfigMap", name)["data"] == {"cluster_name": "prod-westeurope-1"}
    assert name != cluster["metadata"]["name"]  # a new hash: the DaemonSet rolls


@pytest.mark.parametrize("name", ALL)
def test_namespaces_and_labels(name: str) -> None:
    docs = build(name)
    assert one(docs, "Namespace", NAMESPACE)
    for doc in docs:
        meta = doc["metadata"]
        labels = meta.get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "spotguard", meta["name"]
        assert labels.get("app.kubernetes.io/part-of") == "spotguard", meta["name"]
        if doc["kind"] in CLUSTER_SCOPED_KINDS:
            assert "namespace" not in meta
        elif doc["kind"] == "RoleBinding" and meta.get("namespace") == "kubeflow":
            pass  # checkpoint tokens are read in the pipelines' namespace (rbac.yaml)
        elif (doc["kind"], meta["name"], meta.get("namespace")) in {
            ("Role", "spotguard-agent-events", "default"),
            ("RoleBinding", "spotguard-agent-events", "default"),
        }:
            pass  # the agent's Node Events are created in `default`, where Node events live
        else:
            assert meta.get("namespace") == NAMESPACE, (doc["kind"], meta["name"])
    for workload in workloads(docs):
        selector = workload["spec"]["selector"]["matchLabels"]
        template = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template.items()
        assert "app.kubernetes.io/component" in selector
        account = pod_spec(workload)["serviceAccountName"]
        assert one(docs, "ServiceAccount", account).get("automountServiceAccountToken") is True


def test_agent_update_strategy() -> None:
    spec = agent("base")["spec"]
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    assert spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"]
    assert "maxSurge" not in spec["updateStrategy"]["rollingUpdate"]  # two agents on one node
    assert 0 < pod_spec(agent("base"))["terminationGracePeriodSeconds"] <= 60


# --- NetworkPolicy --------------------------------------------------------------------------


def _allows(rules: list[Doc], port: int, protocol: str = "TCP") -> list[Doc]:
    """The `to`/`from` peers of the rules that open ``port`` ([] = not open; [{}] = anywhere)."""
    peers: list[Doc] = []
    for rule in rules:
        if any(
            p.get("port") == port and p.get("protocol", "TCP") == protocol for p in rule["ports"]
        ):
            found: list[Doc] = rule["to"] if "to" in rule else rule.get("from", [{}])
            peers.extend(found)
    return peers


def _selects(policy: Doc, workload: Doc) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"].items()
    return bool(wanted <= workload["spec"]["template"]["metadata"]["labels"].items())


@pytest.mark.parametrize("name", ALL)
def test_agent_network_policy(name: str) -> None:
    docs = build(name)
    policy = one(docs, "NetworkPolicy", "spotguard-agent")
    assert _selects(policy, agent(name))
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert _allows(policy["spec"]["ingress"], HTTP_PORT) == [{}]
    egress = policy["spec"]["egress"]
    assert _allows(egress, 53, "UDP") == [{}]
    assert _allows(egress, 53, "TCP") == [{}]
    assert _allows(egress, 443) == [{}]  # API server, Entra ID, Service Bus over WebSockets
    assert _allows(egress, 5671) == [{}]  # Service Bus AMQP
    assert _allows(egress, 80) == [{"ipBlock": {"cidr": IMDS}}]
    assert _allows(egress, CHECKPOINT_PORT) == [{"namespaceSelector": {}}]
    assert _allows(egress, 9093) == [{"namespaceSelector": {}}]


def test_queue_network_policy() -> None:
    docs = build("queue-mode")
    policy = one(docs, "NetworkPolicy", "spotguard-queue")
    assert _selects(policy, queue())
    assert not _selects(one(docs, "NetworkPolicy", "spotguard-agent"), queue())
    egress = policy["spec"]["egress"]
    assert _allows(egress, 443) == [{}]
    assert _allows(egress, 5671) == [{}]
    assert _allows(egress, 53, "UDP") == [{}]
    assert _allows(egress, 80) == []
    assert _allows(egress, CHECKPOINT_PORT) == []
    assert _allows(policy["spec"]["ingress"], HTTP_PORT) == [{}]


# --- monitoring: copied from dashboards/ ----------------------------------------------------


def _relabel() -> Doc:
    loaded: Doc = yaml.safe_load(RELABEL.read_text(encoding="utf-8"))
    return loaded


@pytest.mark.parametrize(
    ("name", "api_version", "monitored"),
    [
        *(
            (n, f"{PROMETHEUS_OPERATOR_GROUP}/v1", "agent")
            for n in ALL
            if n != "managed-prometheus"
        ),
        ("managed-prometheus", f"{AZURE_MONITOR_GROUP}/v1", "agent"),
        ("queue-mode", f"{PROMETHEUS_OPERATOR_GROUP}/v1", "queue"),
    ],
)
def test_pod_monitor(name: str, api_version: str, monitored: str) -> None:
    docs = build(name)
    workload = agent(name) if monitored == "agent" else queue()
    (monitor,) = [
        d
        for d in find(docs, "PodMonitor")
        if d["apiVersion"] == api_version
        and d["spec"]["selector"]["matchLabels"].items()
        <= workload["spec"]["template"]["metadata"]["labels"].items()
    ]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    relabel = _relabel()
    assert endpoint == {
        "port": "http",
        "path": "/metrics",
        "interval": "5s",
        "scrapeTimeout": "4s",
        "relabelings": relabel["relabelings"],
        "metricRelabelings": relabel["metricRelabelings"],
    }
    assert "namespaceSelector" not in monitor["spec"]  # its own namespace
    if api_version.startswith(AZURE_MONITOR_GROUP):
        assert monitor["spec"]["labelLimit"] == 63


def test_managed_prometheus_has_no_operator_kinds() -> None:
    docs = build("managed-prometheus")
    assert not [d for d in docs if group_of(d) == PROMETHEUS_OPERATOR_GROUP]


@pytest.mark.parametrize("name", [n for n in ALL if n != "managed-prometheus"])
def test_prometheus_rule_is_the_rule_file(name: str) -> None:
    rule = one(build(name), "PrometheusRule", "spotguard")
    assert rule["spec"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))


# --- deploy/generate.py ---------------------------------------------------------------------


def test_generated_files_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_generator_check_fails_when_stale(tmp_path: Path) -> None:
    for source in ("deploy/generate.py", "config/spotguard.yaml", "dashboards/relabel.yaml"):
        (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / source).write_text((ROOT / source).read_text())
    (tmp_path / "dashboards/alerts").mkdir()
    (tmp_path / "dashboards/alerts/spotguard.rules.yml").write_text(RULES.read_text())
    for overlay in ("base", "overlays/queue-mode", "overlays/managed-prometheus"):
        (tmp_path / "deploy" / overlay).mkdir(parents=True)
    script = [sys.executable, str(tmp_path / "deploy/generate.py")]

    def check() -> int:
        return subprocess.run([*script, "--check"], capture_output=True, check=False).returncode

    assert check() == 1  # nothing generated yet
    subprocess.run(script, capture_output=True, check=True)
    assert check() == 0
    with (tmp_path / "config/spotguard.yaml").open("a") as config:
        config.write("# changed\n")
    assert check() == 1
