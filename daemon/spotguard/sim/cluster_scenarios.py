"""Starting states for ``spotguard simulate-cluster --scenario NAME``.

``empty``: only the built-in namespaces. ``spot-node``: an AKS cluster with a spot pool of two
nodes and a system node; the first spot node carries the pod mix a drain has to deal with
(DaemonSet pods, a Deployment behind a PodDisruptionBudget, an unmanaged pod, an emptyDir pod,
Kubeflow pipeline steps with long grace periods that take checkpoints).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

SPOT_NODE = "aks-spot-12345678-vmss000000"
SPARE_SPOT_NODE = "aks-spot-12345678-vmss000001"
SYSTEM_NODE = "aks-system-23456789-vmss000000"
_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
_NODE_RG = "mc_rg-ml_aks-ml_westeurope"
_NOW = "2026-01-01T00:00:00Z"
_SPOT_TAINT = {
    "key": "kubernetes.azure.com/scalesetpriority",
    "value": "spot",
    "effect": "NoSchedule",
}
_SPOT_TOLERATION = {
    "key": "kubernetes.azure.com/scalesetpriority",
    "operator": "Equal",
    "value": "spot",
    "effect": "NoSchedule",
}


def node_object(name: str, pool: str, index: int, *, spot: bool, ip: str) -> dict[str, Any]:
    vmss = name.rsplit("vmss", 1)[0] + "vmss"
    labels = {
        "agentpool": pool,
        "kubernetes.azure.com/agentpool": pool,
        "kubernetes.azure.com/cluster": "MC_rg-ml_aks-ml_westeurope",
        "kubernetes.azure.com/mode": "user" if spot else "system",
        "kubernetes.azure.com/node-image-version": "AKSUbuntu-2204gen2containerd-202601.01.0",
        "kubernetes.azure.com/os-sku": "Ubuntu",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "Standard_D8s_v5" if spot else "Standard_D4s_v5",
        "topology.kubernetes.io/region": "westeurope",
        "topology.kubernetes.io/zone": "0",
    }
    spec: dict[str, Any] = {
        "podCIDR": f"10.244.{index}.0/24",
        "podCIDRs": [f"10.244.{index}.0/24"],
        "providerID": (
            f"azure:///subscriptions/{_SUBSCRIPTION}/resourceGroups/{_NODE_RG}/providers/"
            f"Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines/{int(name[-6:])}"
        ),
    }
    if spot:
        labels["kubernetes.azure.com/scalesetpriority"] = "spot"
        spec["taints"] = [dict(_SPOT_TAINT)]
    conditions = [
        {
            "type": t,
            "status": "False",
            "reason": f"No{t}",
            "message": "",
            "lastHeartbeatTime": _NOW,
            "lastTransitionTime": _NOW,
        }
        for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
    ] + [
        {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": _NOW,
            "lastTransitionTime": _NOW,
        }
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "uid": f"node-{name}"},
        "spec": spec,
        "status": {
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "capacity": {"cpu": "8", "memory": "32863928Ki", "pods": "110"},
            "allocatable": {"cpu": "7820m", "memory": "28676280Ki", "pods": "110"},
            "nodeInfo": {
                "kubeletVersion": "v1.33.5",
                "containerRuntimeVersion": "containerd://1.7.28-1",
                "osImage": "Ubuntu 22.04.5 LTS",
                "kernelVersion": "5.15.0-1092-azure",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kubeProxyVersion": "",
            },
        },
    }


def owner_ref(kind: str, name: str, api_version: str = "apps/v1") -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": f"uid-{kind.lower()}-{name}",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_object(
    namespace: str,
    name: str,
    node: str,
    ip: str,
    *,
    labels: Mapping[str, str],
    owner: dict[str, Any] | None = None,
    grace: int = 30,
    tolerations: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    annotations: Mapping[str, str] | None = None,
    image: str = "mcr.microsoft.com/oss/nginx/nginx:1.27.3",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner:
        meta["ownerReferences"] = [owner]
    if annotations:
        meta["annotations"] = dict(annotations)
    container: dict[str, Any] = {"name": "main", "image": image}
    if volumes:
        container["volumeMounts"] = [
            {"name": v["name"], "mountPath": f"/data/{v['name']}"} for v in volumes
        ]
    spec: dict[str, Any] = {
        "nodeName": node,
        "containers": [container],
        "terminationGracePeriodSeconds": grace,
        "tolerations": tolerations or [dict(_SPOT_TOLERATION)],
    }
    if volumes:
        spec["volumes"] = volumes
    conditions = [
        {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": _NOW}
        for t in (
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        )
    ]
    status = {
        "phase": "Running",
        "conditions": conditions,
        "hostIP": "10.224.0.5",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": _NOW,
        "qosClass": "BestEffort",
        "containerStatuses": [
            {
                "name": "main",
                "image": image,
                "imageID": "",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": _NOW}},
            }
        ],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def workload_object(
    kind: str, namespace: str, name: str, labels: Mapping[str, str], **spec: Any
) -> dict[str, Any]:
    template = {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "containers": [{"name": "main", "image": "mcr.microsoft.com/oss/nginx/nginx:1.27.3"}],
            "tolerations": [{"operator": "Exists"}]
            if kind == "DaemonSet"
            else [dict(_SPOT_TOLERATION)],
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{kind.lower()}-{name}",
            "labels": dict(labels),
            "generation": 1,
        },
        "spec": {"selector": {"matchLabels": dict(labels)}, "template": template, **spec},
        "status": {"observedGeneration": 1},
    }


def empty() -> list[dict[str, Any]]:
    return []


def spot_node() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [
        node_object(SPOT_NODE, "spot", 0, spot=True, ip="10.224.0.5"),
        node_object(SPARE_SPOT_NODE, "spot", 1, spot=True, ip="10.224.0.6"),
        node_object(SYSTEM_NODE, "system", 2, spot=False, ip="10.224.0.4"),
    ]
    # DaemonSets, with their pods on every node they select.
    proxy_labels = {"component": "kube-proxy", "tier": "node"}
    agent_labels = {"app.kubernetes.io/name": "spotguard"}
    objects.append(workload_object("DaemonSet", "kube-system", "kube-proxy", proxy_labels))
    objects.append(workload_object("DaemonSet", "spotguard", "spotguard-agent", agent_labels))
    any_taint = [{"operator": "Exists"}]
    for i, node in enumerate((SPOT_NODE, SPARE_SPOT_NODE, SYSTEM_NODE)):
        objects.append(
            pod_object(
                "kube-system",
                f"kube-proxy-{'abc'[i]}x7k2",
                node,
                f"10.224.0.{5 + i}",
                labels=proxy_labels,
                owner=owner_ref("DaemonSet", "kube-proxy"),
                tolerations=any_taint,
                grace=1,
            )
        )
    for i, node in enumerate((SPOT_NODE, SPARE_SPOT_NODE)):
        objects.append(
            pod_object(
                "spotguard",
                f"spotguard-agent-{'ab'[i]}9q4m",
                node,
                f"10.244.{i}.2",
                labels=agent_labels,
                owner=owner_ref("DaemonSet", "spotguard-agent"),
                tolerations=any_taint,
            )
        )
    # A Deployment of three replicas behind a PDB that allows one disruption at a time.
    web_labels = {"app": "web", "pod-template-hash": "7d9f8c6b5d"}
    deployment = workload_object("Deployment", "shop", "web", {"app": "web"}, replicas=3)
    replicaset = workload_object("ReplicaSet", "shop", "web-7d9f8c6b5d", web_labels, replicas=3)
    replicaset["metadata"]["ownerReferences"] = [owner_ref("Deployment", "web")]
    objects += [deployment, replicaset]
    for i, suffix in enumerate(("hx2lq", "k8f4w", "p9t6z")):
        objects.append(
            pod_object(
                "shop",
                f"web-7d9f8c6b5d-{suffix}",
                SPOT_NODE,
                f"10.244.0.{10 + i}",
                labels=web_labels,
                owner=owner_ref("ReplicaSet", "web-7d9f8c6b5d"),
                grace=10,
            )
        )
    objects.append(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "shop", "generation": 1},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}},
        }
    )
    # An unmanaged pod (needs --force) and a ReplicaSet pod with emptyDir data.
    objects.append(
        pod_object(
            "shop", "debug-shell", SPOT_NODE, "10.244.0.20", labels={"run": "debug-shell"}, grace=5
        )
    )
    cache_labels = {"app": "cache-warmer", "pod-template-hash": "5f6d7c8b9"}
    cache_rs = workload_object(
        "ReplicaSet", "shop", "cache-warmer-5f6d7c8b9", cache_labels, replicas=1
    )
    objects.append(cache_rs)
    objects.append(
        pod_object(
            "shop",
            "cache-warmer-5f6d7c8b9-m2v7r",
            SPOT_NODE,
            "10.244.0.21",
            labels=cache_labels,
            owner=owner_ref("ReplicaSet", "cache-warmer-5f6d7c8b9"),
            volumes=[{"name": "scratch", "emptyDir": {}}],
        )
    )
    # Kubeflow pipeline steps (Argo Workflow pods) that checkpoint over HTTP and stop slowly.
    # Their pod IP is loopback: an agent run against this scenario asks them to checkpoint, and
    # its requests must not leave the machine (nothing listens there unless a test serves it).
    token = base64.b64encode(b"sim-checkpoint-token").decode()
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "spotguard-checkpoint", "namespace": "kubeflow"},
            "data": {"token": token},
        }
    )
    workflow = owner_ref("Workflow", "train-pipeline-x7k2p", api_version="argoproj.io/v1alpha1")
    for i, step in enumerate(("train-model", "evaluate")):
        objects.append(
            pod_object(
                "kubeflow",
                f"train-pipeline-x7k2p-system-container-impl-{1234567890 + i}",
                SPOT_NODE,
                "127.0.0.1",
                grace=120,
                owner=workflow,
                labels={
                    "workflows.argoproj.io/workflow": "train-pipeline-x7k2p",
                    "pipelines.kubeflow.org/v2_component": "true",
                    "step": step,
                },
                annotations={
                    "spotguard.io/checkpoint": "http",
                    "spotguard.io/checkpoint-port": str(18471 + i),
                    "spotguard.io/checkpoint-path": "/checkpoint",
                },
                volumes=[{"name": "kfp-launcher", "emptyDir": {}}],
                image="ghcr.io/kubeflow/kfp-trainer:2.5.0",
            )
        )
    return objects


SCENARIOS: Mapping[str, Callable[[], list[dict[str, Any]]]] = MappingProxyType(
    {"empty": empty, "spot-node": spot_node}
)
