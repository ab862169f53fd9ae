"""PodDisruptionBudget maths: the disruption controller's status and the eviction decision.

Pure functions over plain objects, following ``pkg/controller/disruption`` and the eviction
REST handler (``pkg/registry/core/pod/storage/eviction.go``) of policy/v1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spotguard.sim.kube_errors import ApiError
from spotguard.sim.kube_selectors import from_label_selector_object, labels_match

#: How long an eviction counts against a budget before the pod must be seen terminating.
DELETION_TIMEOUT_S = 120.0


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def terminating(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return dict(ref)
    return None


def pdb_selects(pdb: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    if (pdb.get("metadata") or {}).get("namespace") != (pod.get("metadata") or {}).get("namespace"):
        return False
    selector = from_label_selector_object((pdb.get("spec") or {}).get("selector"))
    return labels_match(selector, (pod.get("metadata") or {}).get("labels"))


def scaled_value(value: int | str, total: int, *, round_up: bool) -> int:
    """``intstr.GetScaledValueFromIntOrPercent``."""
    if isinstance(value, int):
        return value
    text = value.strip()
    if not text.endswith("%") or not text[:-1].isdigit():
        raise ValueError(f"invalid value for IntOrString: {value!r}")
    scaled = int(text[:-1]) * total / 100
    return math.ceil(scaled) if round_up else math.floor(scaled)


class NoController(Exception):
    pass


#: Looks up the scale (desired replicas) of a pod's controller; raises NoController.
ScaleLookup = Callable[[str, Mapping[str, Any]], "tuple[str, int] | None"]


def expected_scale(pods: list[Mapping[str, Any]], scale_of: ScaleLookup) -> int:
    """Sum of the scales of the distinct controllers of ``pods``; unmanaged pods are ignored."""
    scales: dict[str, int] = {}
    for pod in pods:
        ref = controller_of(pod)
        if ref is None:
            continue
        if ref.get("uid") in scales:
            continue
        found = scale_of(str(pod["metadata"].get("namespace") or ""), ref)
        if found is None:
            raise NoController(f"found no controllers for pod {pod['metadata']['name']!r}")
        uid, scale = found
        scales[uid] = scale
    return sum(scales.values())


def _condition(
    allowed: bool, reason: str, message: str, generation: int, now: str, old: Mapping[str, Any]
) -> list[dict[str, Any]]:
    status = "True" if allowed else "False"
    for c in old.get("conditions") or ():
        if (
            c.get("type") == "DisruptionAllowed"
            and c.get("status") == status
            and c.get("reason") == reason
        ):
            return [dict(c, observedGeneration=generation, message=message)]
    return [
        {
            "type": "DisruptionAllowed",
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": now,
        }
    ]


def compute_status(
    pdb: Mapping[str, Any],
    pods: list[Mapping[str, Any]],
    scale_of: ScaleLookup,
    *,
    now: str,
    now_s: float,
    parse_time: Callable[[str], float],
) -> dict[str, Any]:
    """The status the disruption controller would write for ``pdb`` given its ``pods``."""
    spec = pdb.get("spec") or {}
    generation = int((pdb.get("metadata") or {}).get("generation") or 1)
    old = pdb.get("status") or {}
    try:
        if spec.get("maxUnavailable") is not None:
            expected = expected_scale(pods, scale_of)
            max_unavailable = scaled_value(spec["maxUnavailable"], expected, round_up=True)
            desired = max(0, expected - max_unavailable)
        elif isinstance(spec.get("minAvailable"), int):
            expected, desired = len(pods), spec["minAvailable"]
        elif spec.get("minAvailable") is not None:
            expected = expected_scale(pods, scale_of)
            desired = scaled_value(spec["minAvailable"], expected, round_up=True)
        else:  # neither set: the apiserver would have rejected it; behave like maxUnavailable 0
            expected, desired = len(pods), len(pods)
    except (NoController, ValueError) as exc:
        return {
            **old,
            "disruptionsAllowed": 0,
            "observedGeneration": generation,
            "conditions": _condition(False, "SyncFailed", str(exc), generation, now, old),
        }
    names = {p["metadata"]["name"]: p for p in pods}
    disrupted = {
        name: at
        for name, at in (old.get("disruptedPods") or {}).items()
        if name in names
        and not terminating(names[name])
        and now_s - parse_time(at) < DELETION_TIMEOUT_S
    }
    healthy = sum(
        1
        for p in pods
        if not terminating(p) and p["metadata"]["name"] not in disrupted and pod_ready(p)
    )
    allowed = healthy - desired
    if expected <= 0 or allowed <= 0:
        allowed = 0
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "conditions": _condition(
            allowed > 0,
            "SufficientPods" if allowed > 0 else "InsufficientPods",
            "",
            generation,
            now,
            old,
        ),
    }
    if disrupted:
        status["disruptedPods"] = disrupted
    return status


@dataclass(frozen=True, slots=True)
class EvictionDecision:
    """Evict (delete) the pod; ``pdb_status`` is the budget's new status when it is charged."""

    pdb_name: str | None = None
    pdb_status: dict[str, Any] | None = None


def decide_eviction(
    pod: Mapping[str, Any], pdbs: list[Mapping[str, Any]], *, now: str
) -> EvictionDecision:
    """Allow, or raise the ApiError the eviction subresource answers."""
    if pod_phase(pod) in ("Succeeded", "Failed", "Pending") or terminating(pod):
        return EvictionDecision()
    if len(pdbs) > 1:
        raise ApiError(
            500,
            "This pod has more than one PodDisruptionBudget, "
            "which the eviction subresource does not support.",
        )
    if not pdbs:
        return EvictionDecision()
    pdb = pdbs[0]
    name = pdb["metadata"]["name"]
    spec, status = pdb.get("spec") or {}, pdb.get("status") or {}
    current, desired = (
        int(status.get("currentHealthy") or 0),
        int(status.get("desiredHealthy") or 0),
    )
    if not pod_ready(pod):
        policy = spec.get("unhealthyPodEvictionPolicy") or "IfHealthyBudget"
        if policy == "AlwaysAllow" or (current >= desired and desired > 0):
            return EvictionDecision()
    generation = int(pdb["metadata"].get("generation") or 1)
    if int(status.get("observedGeneration") or 0) < generation:
        raise _too_many(f"The disruption budget {name} is still being processed by the server.")
    allowed = int(status.get("disruptionsAllowed") or 0)
    if allowed < 0:
        raise ApiError(
            403,
            f'poddisruptionbudgets.policy "{name}" is forbidden: '
            "pdb disruptions allowed is negative",
            details={"name": name, "group": "policy", "kind": "poddisruptionbudgets"},
        )
    if allowed == 0:
        raise _too_many(
            f"The disruption budget {name} needs {desired} healthy pods and has {current} currently"
        )
    disrupted = dict(status.get("disruptedPods") or {})
    disrupted[pod["metadata"]["name"]] = now
    new_status = {**status, "disruptionsAllowed": allowed - 1, "disruptedPods": disrupted}
    if allowed - 1 == 0:
        new_status["conditions"] = _condition(
            False, "InsufficientPods", "", generation, now, status
        )
    return EvictionDecision(pdb_name=name, pdb_status=new_status)


def _too_many(cause: str) -> ApiError:
    return ApiError(
        429,
        "Cannot evict pod as it would violate the pod's disruption budget.",
        details={"causes": [{"reason": "DisruptionBudget", "message": cause}]},
    )


def evicted() -> dict[str, Any]:
    """The body of a successful eviction: a bare ``Status`` with code 201."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
