"""Stand-ins for the kubelet, scheduler, ReplicaSet controller and disruption controller.

Just enough for the cluster to behave rather than merely store: pods bound to a node become
Running and Ready after ``ready_after``; a deleted pod takes its grace period (or
``stop_after``, whichever is shorter) to go away; a ReplicaSet replaces a pod as soon as its
deletion starts, and the scheduler places the replacement on a schedulable node whose taints it
tolerates; PodDisruptionBudget status follows the pods. They react synchronously to store
changes and use the event loop's clock for delays.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from spotguard.clock import Clock
from spotguard.sim.kube_disruption import compute_status, controller_of, pdb_selects, terminating
from spotguard.sim.kube_resources import Catalogue, ResourceType
from spotguard.sim.kube_selectors import from_label_selector_object, labels_match
from spotguard.sim.kube_settings import (
    READY_AFTER_ANNOTATION,
    STOP_AFTER_ANNOTATION,
    EmulatorSettings,
    seconds_annotation,
)
from spotguard.sim.kube_store import Change, ObjectStore, Stored, k8s_time
from spotguard.sim.kube_validation import default_pod_spec

_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's generateName alphabet


def random_suffix(length: int = 5) -> str:
    return "".join(secrets.choice(_NAME_ALPHABET) for _ in range(length))


def tolerates(tolerations: list[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if (t.get("operator") or "Equal") == "Exists":
            if not t.get("key") or t.get("key") == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (
            taint.get("value") or ""
        ):
            return True
    return False


def node_fits(node: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Cordon, NoSchedule/NoExecute taints and nodeSelector; no resources, no affinity."""
    spec, pod_spec = node.get("spec") or {}, pod.get("spec") or {}
    if spec.get("unschedulable") or terminating(node):
        return False
    tolerations = pod_spec.get("tolerations") or []
    for taint in spec.get("taints") or ():
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in (pod_spec.get("nodeSelector") or {}).items())


def parse_k8s_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def ready_status(
    pod: Mapping[str, Any], node: Mapping[str, Any], pod_ip: str, now: str
) -> dict[str, Any]:
    addresses = (node.get("status") or {}).get("addresses") or ()
    host_ip = next((a["address"] for a in addresses if a.get("type") == "InternalIP"), "10.224.0.4")
    conditions = [
        {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
        for t in (
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        )
    ]
    containers = [
        {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "containerID": f"containerd://{secrets.token_hex(16)}",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": now}},
        }
        for c in (pod.get("spec") or {}).get("containers") or ()
    ]
    return {
        **(pod.get("status") or {}),
        "phase": "Running",
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "containerStatuses": containers,
    }


class ClusterControllers:
    def __init__(
        self, *, store: ObjectStore, catalogue: Catalogue, settings: EmulatorSettings, clock: Clock
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self.pods = _need(catalogue, "", "pods")
        self.nodes = _need(catalogue, "", "nodes")
        self.pdbs = _need(catalogue, "policy", "poddisruptionbudgets")
        self.replicasets = _need(catalogue, "apps", "replicasets")
        self.deployments = _need(catalogue, "apps", "deployments")
        self.statefulsets = _need(catalogue, "apps", "statefulsets")
        self._scaled = {self.replicasets, self.deployments, self.statefulsets}
        self._ready_timers: dict[str, asyncio.TimerHandle] = {}
        self._stop_timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._next_ip = 0
        store.add_hook(self._on_change)

    def close(self) -> None:
        for handle in self._ready_timers.values():
            handle.cancel()
        for _, handle in self._stop_timers.values():
            handle.cancel()
        self._ready_timers.clear()
        self._stop_timers.clear()

    # --- dispatch -------------------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        rtype = change.rtype
        if self._settings.controllers:
            if rtype is self.pods:
                self._pod_changed(change)
            elif rtype is self.nodes and _scheduling_relevant(change):
                self._node_changed(change)
        if not self._settings.disruption_controller:
            return
        if rtype is self.pods and _disruption_relevant(change):
            # Only the budgets that select this pod can change: a drain evicts a hundred pods,
            # and recomputing every budget of the namespace for each made evictions O(pods²).
            touched = [change.new.obj] + ([change.old.obj] if change.old is not None else [])
            self.sync_budgets(change.new.namespace, touching=touched)
        elif rtype is self.pdbs or rtype in self._scaled:
            self.sync_budgets(change.new.namespace)

    # --- kubelet + ReplicaSet -------------------------------------------------------------

    def _pod_changed(self, change: Change) -> None:
        pod, uid = change.new.obj, change.new.meta.get("uid", "")
        if change.type == "DELETED":
            self._cancel(uid)
            if change.old is not None and not terminating(change.old.obj):
                self._replace(pod)
            return
        if terminating(pod):
            self._cancel_ready(uid)
            if change.old is None or not terminating(change.old.obj):
                self._replace(pod)
            self._schedule_stop(change.new)
            return
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name:
            if change.type == "ADDED":
                self._schedule(change.new)
            return
        self._schedule_ready(change.new)

    def _schedule_ready(self, pod: Stored) -> None:
        uid = pod.meta.get("uid", "")
        if (pod.obj.get("status") or {}).get(
            "phase", "Pending"
        ) != "Pending" or uid in self._ready_timers:
            return
        if self._store.get(self.nodes, None, pod.obj["spec"]["nodeName"]) is None:
            return  # no kubelet to run it; retried when the node appears
        delay = seconds_annotation(pod.obj, READY_AFTER_ANNOTATION)
        delay = self._settings.ready_after if delay is None else delay
        loop = asyncio.get_running_loop()
        self._ready_timers[uid] = loop.call_later(
            delay, self._become_ready, pod.namespace, pod.name, uid
        )

    def _become_ready(self, namespace: str, name: str, uid: str) -> None:
        self._ready_timers.pop(uid, None)
        pod = self._store.get(self.pods, namespace, name)
        if pod is None or pod.meta.get("uid") != uid or terminating(pod.obj):
            return
        node = self._store.get(self.nodes, None, pod.obj["spec"].get("nodeName", ""))
        if node is None or (pod.obj.get("status") or {}).get("phase", "Pending") != "Pending":
            return
        self._next_ip += 1
        ip = f"10.244.{(self._next_ip >> 8) & 255}.{self._next_ip & 255}"
        status = ready_status(pod.obj, node.obj, ip, self._store.now())
        self._store.replace(self.pods, pod, {**pod.obj, "status": status})

    def _schedule_stop(self, pod: Stored) -> None:
        uid = pod.meta.get("uid", "")
        grace = pod.meta.get("deletionGracePeriodSeconds")
        if grace is None or grace <= 0:
            return  # already stopped; waiting for finalizers
        stop_after = seconds_annotation(pod.obj, STOP_AFTER_ANNOTATION)
        stop_after = self._settings.stop_after if stop_after is None else stop_after
        delay = float(grace) if stop_after is None else min(float(grace), stop_after)
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        existing = self._stop_timers.get(uid)
        if existing is not None:
            if existing[0] <= when:
                return
            existing[1].cancel()
        handle = loop.call_later(delay, self._stopped, pod.namespace, pod.name, uid)
        self._stop_timers[uid] = (when, handle)

    def _stopped(self, namespace: str, name: str, uid: str) -> None:
        """The containers exited: the kubelet deletes the pod object with grace 0."""
        self._stop_timers.pop(uid, None)
        pod = self._store.get(self.pods, namespace, name)
        if pod is not None and pod.meta.get("uid") == uid:
            finish_deletion(self._store, self.pods, pod)

    def _cancel_ready(self, uid: str) -> None:
        handle = self._ready_timers.pop(uid, None)
        if handle is not None:
            handle.cancel()

    def _cancel(self, uid: str) -> None:
        self._cancel_ready(uid)
        stop = self._stop_timers.pop(uid, None)
        if stop is not None:
            stop[1].cancel()

    def _replace(self, pod: Mapping[str, Any]) -> None:
        """A ReplicaSet whose pod is going away creates a new one from its template."""
        ref = controller_of(pod)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return
        namespace = pod["metadata"].get("namespace", "")
        rs = self._store.get(self.replicasets, namespace, str(ref.get("name")))
        if rs is None or rs.meta.get("uid") != ref.get("uid") or terminating(rs.obj):
            return
        template = (rs.obj.get("spec") or {}).get("template") or {}
        template_meta = template.get("metadata") or {}
        spec = copy.deepcopy(template.get("spec") or pod.get("spec") or {})
        spec.pop("nodeName", None)
        meta: dict[str, Any] = {
            "name": f"{rs.name}-{random_suffix()}",
            "generateName": f"{rs.name}-",
            "namespace": namespace,
            "labels": dict(template_meta.get("labels") or pod["metadata"].get("labels") or {}),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": rs.name,
                    "uid": rs.meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if template_meta.get("annotations"):
            meta["annotations"] = dict(template_meta["annotations"])
        replacement = {
            "metadata": meta,
            "spec": default_pod_spec(spec),
            "status": {
                "phase": "Pending",
                "qosClass": (pod.get("status") or {}).get("qosClass", "BestEffort"),
            },
        }
        self._store.create(self.pods, replacement)

    # --- scheduler ------------------------------------------------------------------------

    def _node_changed(self, change: Change) -> None:
        node_name = change.new.name
        for pod in list(self._store.items(self.pods)):
            spec = pod.obj.get("spec") or {}
            if terminating(pod.obj):
                continue
            if not spec.get("nodeName"):
                self._schedule(pod)
            elif change.type == "ADDED" and spec["nodeName"] == node_name:
                self._schedule_ready(pod)

    def _schedule(self, pod: Stored) -> None:
        spec = pod.obj.get("spec") or {}
        if (
            spec.get("nodeName")
            or spec.get("schedulerName", "default-scheduler") != "default-scheduler"
        ):
            return
        candidates = [n for n in self._store.items(self.nodes) if node_fits(n.obj, pod.obj)]
        if not candidates:
            return
        load: dict[str, int] = {n.name: 0 for n in candidates}
        for other in self._store.items(self.pods):
            bound = (other.obj.get("spec") or {}).get("nodeName")
            if bound in load and not terminating(other.obj):
                load[bound] += 1
        node = min(candidates, key=lambda n: (load[n.name], n.name))
        status = dict(pod.obj.get("status") or {})
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": self._store.now(),
            }
        ]
        self._store.replace(
            self.pods, pod, {**pod.obj, "spec": {**spec, "nodeName": node.name}, "status": status}
        )

    # --- disruption controller ------------------------------------------------------------

    def sync_budgets(self, namespace: str, *, touching: Sequence[Mapping[str, Any]] = ()) -> None:
        """Recompute the status of the namespace's budgets (only those selecting ``touching``,
        when given)."""
        budgets = [b for b in self._store.items(self.pdbs, namespace) if not terminating(b.obj)]
        if touching:
            budgets = [b for b in budgets if any(pdb_selects(b.obj, p) for p in touching)]
        if not budgets:
            return
        pods = [p.obj for p in self._store.items(self.pods, namespace)]
        now = self._clock.now()
        for pdb in budgets:
            selector = from_label_selector_object((pdb.obj.get("spec") or {}).get("selector"))
            status = compute_status(
                pdb.obj,
                [
                    p
                    for p in pods
                    if labels_match(selector, (p.get("metadata") or {}).get("labels"))
                ],
                self._scale_of,
                now=k8s_time(now),
                now_s=now.timestamp(),
                parse_time=parse_k8s_time,
            )
            if status != pdb.obj.get("status"):
                self._store.replace(self.pdbs, pdb, {**pdb.obj, "status": status})

    def _scale_of(self, namespace: str, ref: Mapping[str, Any]) -> tuple[str, int] | None:
        kinds: dict[str, ResourceType] = {
            "ReplicaSet": self.replicasets,
            "Deployment": self.deployments,
            "StatefulSet": self.statefulsets,
        }
        rtype = kinds.get(str(ref.get("kind")))
        if rtype is None:
            return None
        owner = self._store.get(rtype, namespace, str(ref.get("name")))
        if owner is None or owner.meta.get("uid") != ref.get("uid"):
            return None
        if rtype is self.replicasets:
            parent = controller_of(owner.obj)
            if parent is not None and parent.get("kind") == "Deployment":
                return self._scale_of(namespace, parent)
        replicas = (owner.obj.get("spec") or {}).get("replicas")
        return owner.meta["uid"], 1 if replicas is None else int(replicas)


def finish_deletion(store: ObjectStore, rtype: ResourceType, stored: Stored) -> None:
    """Complete a deletion: gone now, or (with finalizers) waiting for them at grace 0."""
    if stored.meta.get("finalizers"):
        meta = {**stored.meta, "deletionGracePeriodSeconds": 0}
        meta.setdefault("deletionTimestamp", store.now())
        store.replace(rtype, stored, {**stored.obj, "metadata": meta})
    else:
        store.remove(rtype, stored)


def _need(catalogue: Catalogue, group: str, plural: str) -> ResourceType:
    version = "v1"
    rtype = catalogue.find(group, version, plural)
    assert rtype is not None, plural
    return rtype


def _scheduling_relevant(change: Change) -> bool:
    if change.type == "ADDED":
        return True
    if change.type == "DELETED" or change.old is None:
        return False
    return (change.new.obj.get("spec") or {}) != (change.old.obj.get("spec") or {})


def _disruption_relevant(change: Change) -> bool:
    if change.type != "MODIFIED" or change.old is None:
        return True
    new, old = change.new.obj, change.old.obj
    return (
        terminating(new) != terminating(old)
        or (new.get("status") or {}).get("conditions")
        != (old.get("status") or {}).get("conditions")
        or new["metadata"].get("labels") != old["metadata"].get("labels")
        or new["metadata"].get("ownerReferences") != old["metadata"].get("ownerReferences")
    )
