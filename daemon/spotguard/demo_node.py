"""The spot node ``spotguard demo`` drains: its VM, its pods, and a spare node for replacements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spotguard.sim.cluster_scenarios import owner_ref, pod_object
from spotguard.sim.cluster_workloads import loaded_node, spare_node, spot_node_name
from spotguard.sim.imds_vm import default_vm_name
from spotguard.sim.kube_settings import STOP_AFTER_ANNOTATION

NODE = spot_node_name(0)
VM = default_vm_name(0)
NAMESPACE = "ml"
#: pods on the node: 20 from the loaded-node mix, plus an unmanaged pod and a second step
LOADED_PODS = 20


def demo_objects(notice: float, speedup: float = 1.0) -> list[dict[str, Any]]:
    """The spot node with its pods, and a spare spot node for the replacements.

    Ordinary pods stop 1 s after SIGTERM; pipeline steps take a quarter of the notice (saving
    a checkpoint) — whatever their grace periods (60 s) say; ``speedup`` divides both.
    """
    quick = 1.0 / speedup
    step_stop = max(1.0, notice / 4) / speedup
    objects = loaded_node(0, LOADED_PODS, namespace=NAMESPACE, stop_after=quick)
    namespace = f"{NAMESPACE}-0"
    workflow = owner_ref("Workflow", "pipeline-0", api_version="argoproj.io/v1alpha1")
    objects.append(
        pod_object(
            namespace,
            "pipeline-0-step-1",
            NODE,
            "10.100.0.200",
            labels={"workflows.argoproj.io/workflow": "pipeline-0"},
            owner=workflow,
            grace=60,
            volumes=[{"name": "kfp-launcher", "emptyDir": {}}],
        )
    )
    objects.append(
        pod_object(namespace, "debug-shell", NODE, "10.100.0.201", labels={"run": "debug"}, grace=5)
    )
    for obj in objects:
        if obj.get("kind") != "Pod":
            continue
        annotations = obj["metadata"].setdefault("annotations", {})
        step = "workflows.argoproj.io/workflow" in obj["metadata"]["labels"]
        annotations[STOP_AFTER_ANNOTATION] = f"{step_stop if step else quick:g}"
    objects.append(spare_node(1))
    return objects


def is_daemonset_pod(pod: Mapping[str, Any]) -> bool:
    """A pod a drain leaves in place."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or ():
        if isinstance(ref, dict) and ref.get("controller") and ref.get("kind") == "DaemonSet":
            return True
    return False
