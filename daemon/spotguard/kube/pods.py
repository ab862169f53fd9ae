"""Drain policy over plain pod JSON: which pods leave, with what grace, and what a refusal means.

Pure functions, no I/O: ``kube/drain.py`` is the mechanism that applies them. The rules follow
``kubectl drain`` (filters.go) with the choices a preemption notice calls for: nothing aborts
the drain; a pod kubectl would refuse to touch without a flag is either moved or reported as
skipped, per ``DrainOptions``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spotguard.kube.client import JSON, KubeError

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
DEFAULT_GRACE_SECONDS = 30  # the apiserver's default terminationGracePeriodSeconds
#: A grace of 0 is a force delete: the API object goes before the containers stop, so a
#: StatefulSet could start the same identity elsewhere while the old one still runs (kubectl
#: turns 0 into 1 for this reason). The safety margin before NotBefore covers this second.
MIN_GRACE_SECONDS = 1
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
PDB_CAUSE = "DisruptionBudget"


@dataclass(frozen=True, slots=True)
class DrainOptions:
    """How a drain treats pods (policy); the caller builds it from the per-kind policy."""

    #: evict pods that no controller manages (kubectl needs --force); they will not come back
    evict_unmanaged: bool = True
    #: evict pods with emptyDir volumes (kubectl: --delete-emptydir-data); their data is lost
    evict_emptydir: bool = True
    #: when a PodDisruptionBudget still refuses once the pod's grace no longer fits before the
    #: deadline, delete the pod (the VM takes it anyway); otherwise report it blocked
    delete_on_pdb_block: bool = True
    #: requests in flight at once; high enough that a full node (110 pods) goes in one wave
    concurrency: int = 256
    #: (namespace, name) of the agent's own pod, never evicted: it runs the drain
    self_pod: tuple[str, str] | None = None
    #: log every write, send none
    dry_run: bool = False
    #: timeout of each API call, seconds (a drain has seconds, not minutes)
    request_timeout: float = 2.0
    #: seconds kept between the end of a shortened grace period and the deadline, for the
    #: kubelet's kill and the deletion to reach the API server
    grace_headroom: float = 1.0
    #: time a pod needs to stop once asked (DESIGN.md's stop budget): a PDB refusal is retried
    #: until only this much (or the pod's own grace, if shorter) is left before the deadline
    stop_budget: float = 3.0
    #: jittered backoff between retries (5xx, no answer, PDB refusal), seconds
    retry_min: float = 0.1
    retry_max: float = 0.5
    min_grace: int = MIN_GRACE_SECONDS
    #: seconds the drain always works, even when the deadline has (nearly) passed: a notice
    #: first seen already Started still gets every pod asked to leave, with the minimal grace
    min_window: float = 1.0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        if not 0 < self.retry_min <= self.retry_max:
            raise ValueError("retries need 0 < retry_min <= retry_max")
        if self.min_grace < 0:
            raise ValueError("min_grace must not be negative")
        if self.min_window < 0:
            raise ValueError("min_window must not be negative")
        if self.stop_budget < 0:
            raise ValueError("stop_budget must not be negative")
        if self.grace_headroom < 0:
            raise ValueError("grace_headroom must not be negative")


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class SkipReason(enum.StrEnum):
    SELF = "self"  # the agent's own pod
    MIRROR = "mirror"  # static pod: the API cannot delete it
    DAEMONSET = "daemonset"  # its controller would recreate it here, and it tolerates the cordon
    FINISHED = "finished"  # Succeeded or Failed: nothing runs
    TERMINATING = "terminating"  # already being deleted by someone
    UNMANAGED = "unmanaged"  # no controller, and evict_unmanaged is off
    EMPTYDIR = "emptydir"  # emptyDir data, and evict_emptydir is off


def pod_ref(pod: Mapping[str, Any]) -> PodRef:
    meta = pod.get("metadata") or {}
    return PodRef(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
    )


def controller_kind(pod: Mapping[str, Any]) -> str | None:
    """Kind of the owner reference marked ``controller: true``, or None."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or ():
        if isinstance(ref, dict) and ref.get("controller"):
            return str(ref.get("kind") or "")
    return None


def finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in FINISHED_PHASES


def own_grace(pod: Mapping[str, Any]) -> int:
    value = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return DEFAULT_GRACE_SECONDS


def _has_emptydir(pod: Mapping[str, Any]) -> bool:
    volumes = (pod.get("spec") or {}).get("volumes") or ()
    return any(isinstance(v, dict) and "emptyDir" in v for v in volumes)


def skip_reason(pod: Mapping[str, Any], options: DrainOptions) -> SkipReason | None:
    """Why the drain leaves this pod alone, or None when it must leave the node."""
    meta = pod.get("metadata") or {}
    if options.self_pod is not None and pod_ref(pod).key == options.self_pod:
        return SkipReason.SELF
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return SkipReason.MIRROR
    controller = controller_kind(pod)
    if controller == "DaemonSet":
        return SkipReason.DAEMONSET
    if finished(pod):
        return SkipReason.FINISHED
    if meta.get("deletionTimestamp"):
        return SkipReason.TERMINATING
    if not options.evict_emptydir and _has_emptydir(pod):
        return SkipReason.EMPTYDIR
    if not options.evict_unmanaged and controller is None:
        return SkipReason.UNMANAGED
    return None


def grace_for(own: int, seconds_left: float, *, minimum: int = MIN_GRACE_SECONDS) -> int:
    """DESIGN.md's budget: min(the pod's own grace, whole seconds left), at least ``minimum``
    (never more than the pod's own, never negative)."""
    left = math.floor(seconds_left) if math.isfinite(seconds_left) else own
    return max(0, min(own, max(left, minimum)))


def pdb_wait_fits(
    *, now: float, pause: float, own: int, deadline: float, stop_budget: float
) -> bool:
    """Whether waiting ``pause`` more for a PodDisruptionBudget still leaves the pod the time it
    needs to stop before the deadline: its own grace, but no more than ``stop_budget``.

    Capping at the stop budget keeps a budget respected for most of the notice: with a 30 s
    Preempt and the default 30 s grace, "its whole grace" would never fit and every
    PDB-protected pod would be deleted on its first refusal, while a budget typically frees up
    within seconds as replacements become ready.
    """
    return now + pause + min(float(own), stop_budget) <= deadline


class Refusal(enum.StrEnum):
    """What an error answer to an eviction or a delete means for the drain."""

    GONE = "gone"  # 404, or our uid precondition failed: the pod we meant no longer exists
    PDB = "pdb"  # a budget refuses for now: retry while the grace fits
    PDB_MISCONFIGURED = "pdb_misconfigured"  # several budgets, negative budget: will not change
    THROTTLED = "throttled"  # API Priority and Fairness: wait Retry-After
    TRANSIENT = "transient"  # no answer, 5xx, 409: retry with backoff
    FATAL = "fatal"  # any other 4xx: retrying cannot help


def classify_refusal(error: KubeError) -> Refusal:
    status, message = error.status, str(error.body.get("message") or error)
    if status == 404:
        return Refusal.GONE
    if status == 409:
        # Both requests carry a uid precondition; anything else conflicting is worth a retry.
        return Refusal.GONE if "UID in precondition" in message else Refusal.TRANSIENT
    if status == 429:
        return Refusal.PDB if PDB_CAUSE in error.causes else Refusal.THROTTLED
    if status == 500 and "more than one PodDisruptionBudget" in message:
        return Refusal.PDB_MISCONFIGURED
    if status == 403 and _details_kind(error.body) == "poddisruptionbudgets":
        return Refusal.PDB_MISCONFIGURED  # "pdb disruptions allowed is negative"
    if error.transient:
        return Refusal.TRANSIENT
    return Refusal.FATAL


def _details_kind(body: JSON) -> str:
    details = body.get("details")
    return str(details.get("kind") or "") if isinstance(details, dict) else ""


def eviction_body(ref: PodRef, grace: int) -> JSON:
    """policy/v1 Eviction; the uid precondition keeps a same-name replacement safe."""
    return {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": ref.name, "namespace": ref.namespace},
        "deleteOptions": {"gracePeriodSeconds": grace, "preconditions": {"uid": ref.uid}},
    }


def delete_body(ref: PodRef, grace: int) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "gracePeriodSeconds": grace,
        "preconditions": {"uid": ref.uid},
    }


def pod_path(ref: PodRef) -> str:
    return f"/api/v1/namespaces/{ref.namespace}/pods/{ref.name}"
