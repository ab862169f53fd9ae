"""A spot node loaded with N pods of the mix a real drain meets, for benchmarks and the demo.

The mix (fractions of the pods that are not DaemonSet pods):

- 3 DaemonSet pods (kube-proxy, a CNI agent, spotguard itself), with their DaemonSets;
- 20 % a Deployment behind a PodDisruptionBudget with ``maxUnavailable: 25%``;
- 15 % ReplicaSet pods with ``emptyDir`` scratch data;
- 5 % unmanaged pods (no controller);
- 10 % Kubeflow pipeline steps (Argo Workflow pods) with a 60 s grace period;
- the rest ReplicaSet batch pods with grace periods spread from 0 to 60 s.

Every pod stops ``stop_after`` seconds after it is asked to (emulator annotation), so the
drain's timing is not hidden by pods that vanish instantly. A second, spare spot node takes the
ReplicaSet replacements, so PDB-limited drains make progress as on a real cluster.
"""

from __future__ import annotations

from typing import Any

from spotguard.sim.cluster_scenarios import (
    node_object,
    owner_ref,
    pod_object,
    workload_object,
)
from spotguard.sim.kube_settings import STOP_AFTER_ANNOTATION

DAEMONSETS = ("kube-proxy", "azure-cns", "spotguard-agent")


def spot_node_name(index: int) -> str:
    return f"aks-spot-12345678-vmss{index:06d}"


def loaded_node(
    index: int, pods: int, *, namespace: str = "work", stop_after: float = 1.0
) -> list[dict[str, Any]]:
    """Objects for node ``index`` carrying ``pods`` pods (DaemonSet pods included).

    Object names carry the node index, so several loaded nodes can share one emulator.
    """
    if pods < len(DAEMONSETS) + 1:
        raise ValueError(f"a loaded node needs at least {len(DAEMONSETS) + 1} pods")
    node = spot_node_name(index)
    ns = f"{namespace}-{index}"
    stop = {STOP_AFTER_ANNOTATION: f"{stop_after:g}"}
    objects: list[dict[str, Any]] = [
        node_object(node, "spot", index, spot=True, ip=f"10.224.{index // 250}.{index % 250 + 4}"),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
    ]
    counter = iter(range(1, 1 << 30))

    def ip() -> str:
        n = next(counter)
        return f"10.{100 + index // 250}.{index % 250}.{n % 250 + 2}"

    for name in DAEMONSETS:
        labels = {"app": f"{name}-{index}"}
        objects.append(workload_object("DaemonSet", ns, f"{name}-{index}", labels))
        objects.append(
            pod_object(
                ns,
                f"{name}-{index}-x",
                node,
                ip(),
                labels=labels,
                owner=owner_ref("DaemonSet", f"{name}-{index}"),
                tolerations=[{"operator": "Exists"}],
                annotations=stop,
            )
        )
    rest = pods - len(DAEMONSETS)
    web = max(1, rest * 20 // 100)
    cache = rest * 15 // 100
    loose = rest * 5 // 100
    steps = rest * 10 // 100
    batch = rest - web - cache - loose - steps

    def replicaset(name: str, count: int, *, grace: int | list[int], **extra: Any) -> None:
        labels = {"app": f"{name}-{index}"}
        rs = f"{name}-{index}"
        objects.append(workload_object("ReplicaSet", ns, rs, labels, replicas=count))
        for i in range(count):
            objects.append(
                pod_object(
                    ns,
                    f"{rs}-{i}",
                    node,
                    ip(),
                    labels=labels,
                    owner=owner_ref("ReplicaSet", rs),
                    grace=grace if isinstance(grace, int) else grace[i % len(grace)],
                    annotations=stop,
                    **extra,
                )
            )

    replicaset("web", web, grace=10)
    objects.append(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": f"web-{index}", "namespace": ns, "generation": 1},
            "spec": {"maxUnavailable": "25%", "selector": {"matchLabels": {"app": f"web-{index}"}}},
        }
    )
    replicaset("cache", cache, grace=30, volumes=[{"name": "scratch", "emptyDir": {}}])
    replicaset("batch", batch, grace=[0, 5, 15, 30, 45, 60])
    for i in range(loose):
        objects.append(
            pod_object(
                ns,
                f"debug-{index}-{i}",
                node,
                ip(),
                labels={"run": "debug"},
                grace=5,
                annotations=stop,
            )
        )
    workflow = owner_ref("Workflow", f"pipeline-{index}", api_version="argoproj.io/v1alpha1")
    for i in range(steps):
        objects.append(
            pod_object(
                ns,
                f"pipeline-{index}-step-{i}",
                node,
                ip(),
                labels={"workflows.argoproj.io/workflow": f"pipeline-{index}"},
                owner=workflow,
                grace=60,
                annotations=stop,
                volumes=[{"name": "kfp-launcher", "emptyDir": {}}],
            )
        )
    return objects


def spare_node(index: int) -> dict[str, Any]:
    """An empty spot node to take replacements."""
    return node_object(spot_node_name(index), "spot", index, spot=True, ip="10.224.9.9")
