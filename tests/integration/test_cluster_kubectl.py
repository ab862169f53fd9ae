"""The real, pinned ``kubectl`` against ``spotguard simulate-cluster``: create -f, get, drain."""

from __future__ import annotations

import json
from typing import Any

import yaml

from spotguard.sim.cluster_process import ClusterProcess
from tests.cluster_fixtures import Kubectl

NODE = "aks-spot-12345678-vmss000000"
SPARE = "aks-spot-12345678-vmss000001"
SPOT_TAINT = {
    "key": "kubernetes.azure.com/scalesetpriority",
    "value": "spot",
    "effect": "NoSchedule",
}
SPOT_TOLERATION = {**SPOT_TAINT, "operator": "Equal"}


def _manifest(*objects: dict[str, Any]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


def _node(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.azure.com/scalesetpriority": "spot"}},
        "spec": {"taints": [SPOT_TAINT]},
    }


def _pod(
    name: str, labels: dict[str, str], owner: dict[str, Any] | None, **spec: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "labels": labels}
    if owner:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [SPOT_TOLERATION],
            "containers": [{"name": "main", "image": "nginx:1.27"}],
            **spec,
        },
    }


def _owner(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": True}


def _uid(kubectl: Kubectl, resource: str, name: str, namespace: str) -> str:
    out = kubectl("get", resource, name, "-n", namespace, "-o", "jsonpath={.metadata.uid}")
    assert out.stdout
    return out.stdout


async def _set_up(kubectl: Kubectl) -> None:
    """Everything through ``kubectl create -f``, as a user would build it."""
    kubectl("create", "-f", "-", stdin=_manifest(_node(NODE), _node(SPARE)))
    kubectl(
        "create",
        "-f",
        "-",
        stdin=_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    )
    agent = {"app": "agent"}
    kubectl(
        "create",
        "-f",
        "-",
        stdin=_manifest(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": "agent", "namespace": "shop"},
                "spec": {
                    "selector": {"matchLabels": agent},
                    "template": {
                        "metadata": {"labels": agent},
                        "spec": {"containers": [{"name": "agent", "image": "busybox"}]},
                    },
                },
            }
        ),
    )
    ds_uid = _uid(kubectl, "daemonset", "agent", "shop")
    web = {"app": "web"}
    template = {
        "metadata": {"labels": web},
        "spec": {
            "containers": [{"name": "main", "image": "nginx:1.27"}],
            "tolerations": [SPOT_TOLERATION],
            "terminationGracePeriodSeconds": 1,
        },
    }
    kubectl(
        "create",
        "-f",
        "-",
        stdin=_manifest(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"replicas": 3, "selector": {"matchLabels": web}, "template": template},
            }
        ),
    )
    deploy_uid = _uid(kubectl, "deployment", "web", "shop")
    kubectl(
        "create",
        "-f",
        "-",
        stdin=_manifest(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": "web-6d4b",
                    "namespace": "shop",
                    "labels": web,
                    "ownerReferences": [_owner("Deployment", "web", deploy_uid)],
                },
                "spec": {"replicas": 3, "selector": {"matchLabels": web}, "template": template},
            }
        ),
    )
    rs_uid = _uid(kubectl, "replicaset", "web-6d4b", "shop")
    pods = [
        _pod(
            "agent-x1",
            agent,
            _owner("DaemonSet", "agent", ds_uid),
            tolerations=[{"operator": "Exists"}],
        ),
        *(
            _pod(f"web-6d4b-{s}", web, _owner("ReplicaSet", "web-6d4b", rs_uid))
            for s in ("a1", "b2", "c3")
        ),
        _pod("scratch", {"run": "scratch"}, None, volumes=[{"name": "tmp", "emptyDir": {}}]),
    ]
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": web}},
    }
    kubectl("create", "-f", "-", stdin=_manifest(*pods, pdb))


def _pods(kubectl: Kubectl) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(kubectl("get", "pods", "-A", "-o", "json").stdout)[
        "items"
    ]
    return items


async def test_kubectl_drain_evicts_one_pod_at_a_time_within_the_budget(
    cluster: ClusterProcess, kubectl: Kubectl
) -> None:
    await _set_up(kubectl)
    ready = [p for p in _pods(kubectl) if p["status"].get("phase") == "Running"]
    # The kubelet stand-in brings bound pods up within ready_after (0.5 s by default).
    for _ in range(50):
        if len(ready) == 5:
            break
        ready = [p for p in _pods(kubectl) if p["status"].get("phase") == "Running"]
    assert len(ready) == 5
    pdb = json.loads(kubectl("get", "pdb", "web", "-n", "shop", "-o", "json").stdout)
    assert pdb["status"]["disruptionsAllowed"] == 1
    mark = await cluster.control.mark()

    result = kubectl(
        "drain", NODE, "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout=60s"
    )

    assert f"node/{NODE} drained" in result.stdout
    assert "would violate the pod's disruption budget" in result.stderr  # it had to wait
    log = [r for r in await cluster.control.requests(since=mark) if "kubectl" in r["user_agent"]]
    pod_writes = [r for r in log if r["resource"] == "pods" and r["verb"] in ("delete", "create")]
    # Evicted through the Eviction API, never deleted.
    assert pod_writes
    assert all(r["subresource"] == "eviction" for r in pod_writes)
    evicted = {r["name"] for r in pod_writes if r["status"] == 201}
    assert evicted == {"web-6d4b-a1", "web-6d4b-b2", "web-6d4b-c3", "scratch"}
    # One web pod at a time: each later one was refused (429) until a replacement was Ready.
    web_ok = sorted(
        r["t"] for r in pod_writes if r["status"] == 201 and r["name"].startswith("web-")
    )
    refused = [r for r in pod_writes if r["status"] == 429]
    assert len(refused) >= 2
    assert web_ok[1] - web_ok[0] > 1.0
    assert web_ok[2] - web_ok[1] > 1.0
    # The node is cordoned; the DaemonSet pod stays; the web pods run on the spare node.
    node = json.loads(kubectl("get", "node", NODE, "-o", "json").stdout)
    assert node["spec"]["unschedulable"] is True
    pods = _pods(kubectl)
    on_node = {p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") == NODE}
    assert on_node == {"agent-x1"}
    web = [p for p in pods if p["metadata"]["labels"].get("app") == "web"]
    assert len(web) == 3
    assert all(p["spec"]["nodeName"] == SPARE and p["status"]["phase"] == "Running" for p in web)


async def test_kubectl_reads_discovery_and_edits_nodes(
    cluster: ClusterProcess, kubectl: Kubectl
) -> None:
    kubectl("create", "-f", "-", stdin=_manifest(_node(NODE)))
    assert "Server Version: v1.37" in kubectl("version").stdout
    resources = kubectl("api-resources", "-o", "name").stdout.split()
    assert {"pods", "nodes", "leases.coordination.k8s.io", "poddisruptionbudgets.policy"} <= set(
        resources
    )

    kubectl("cordon", NODE)
    kubectl("label", "node", NODE, "spotguard.io/test=yes")
    kubectl("taint", "node", NODE, "spotguard.io/preempt=abc:NoSchedule")
    node = json.loads(kubectl("get", "node", NODE, "-o", "json").stdout)
    assert node["spec"]["unschedulable"] is True
    assert node["metadata"]["labels"]["spotguard.io/test"] == "yes"
    assert {t["key"] for t in node["spec"]["taints"]} == {SPOT_TAINT["key"], "spotguard.io/preempt"}
    kubectl("uncordon", NODE)
    assert (
        "unschedulable" not in json.loads(kubectl("get", "node", NODE, "-o", "json").stdout)["spec"]
    )

    rejected = kubectl("taint", "node", NODE, "bad=x:Sometimes", check=False)
    assert rejected.returncode != 0
    assert "Unsupported value" in rejected.stderr or "invalid" in rejected.stderr.lower()

    log = await cluster.control.requests()
    patches = [r for r in log if r["verb"] == "patch" and r["resource"] == "nodes"]
    assert patches
    assert all(r["name"] == NODE for r in patches)
    # cordon and taint send strategic merge patches, label a JSON merge patch
    assert {r["content_type"] for r in patches} == {
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
    }
