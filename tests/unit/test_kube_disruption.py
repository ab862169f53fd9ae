from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from spotguard.sim.kube_disruption import compute_status, decide_eviction, scaled_value
from spotguard.sim.kube_errors import ApiError

NOW, NOW_S = "2026-01-01T00:00:00Z", 1767225600.0
RS = {"kind": "ReplicaSet", "name": "web", "uid": "rs", "controller": True}


def _pod(
    name: str,
    *,
    ready: bool = True,
    terminating: bool = False,
    owner: Mapping[str, Any] | None = RS,
    phase: str = "Running",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": {"app": "web"}}
    if owner:
        meta["ownerReferences"] = [dict(owner)]
    if terminating:
        meta["deletionTimestamp"] = NOW
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": meta, "spec": {}, "status": {"phase": phase, "conditions": conditions}}


def _pdb(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "ns", "generation": 1},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, **spec},
    }


def _scale(replicas: int | None) -> Any:
    def lookup(namespace: str, ref: Mapping[str, Any]) -> tuple[str, int] | None:
        return None if replicas is None else (str(ref["uid"]), replicas)

    return lookup


def _status(
    pdb: dict[str, Any], pods: list[dict[str, Any]], replicas: int | None = 3
) -> dict[str, Any]:
    return compute_status(
        pdb, pods, _scale(replicas), now=NOW, now_s=NOW_S, parse_time=lambda _t: NOW_S
    )


@pytest.mark.parametrize(
    ("spec", "expected", "desired", "allowed"),
    [
        ({"maxUnavailable": 1}, 3, 2, 1),
        ({"maxUnavailable": "50%"}, 3, 1, 2),  # 50 % of 3 rounds up to 2 unavailable
        ({"minAvailable": 2}, 3, 2, 1),
        ({"minAvailable": "100%"}, 3, 3, 0),
        ({"maxUnavailable": 0}, 3, 3, 0),
    ],
)
def test_budget_status(spec: dict[str, Any], expected: int, desired: int, allowed: int) -> None:
    status = _status(_pdb(**spec), [_pod("a"), _pod("b"), _pod("c")])
    assert (status["expectedPods"], status["desiredHealthy"], status["disruptionsAllowed"]) == (
        expected,
        desired,
        allowed,
    )
    assert status["currentHealthy"] == 3
    assert status["observedGeneration"] == 1


def test_terminating_and_unready_pods_are_not_healthy() -> None:
    status = _status(
        _pdb(maxUnavailable=1), [_pod("a"), _pod("b", terminating=True), _pod("c", ready=False)]
    )
    assert (status["currentHealthy"], status["disruptionsAllowed"]) == (1, 0)
    assert status["conditions"][0]["reason"] == "InsufficientPods"


def test_a_missing_controller_fails_safe() -> None:
    status = _status(_pdb(maxUnavailable=1), [_pod("a")], replicas=None)
    assert status["disruptionsAllowed"] == 0
    assert status["conditions"][0]["reason"] == "SyncFailed"
    # minAvailable as a number needs no controller
    assert (
        _status(_pdb(minAvailable=0), [_pod("a", owner=None)], replicas=None)["disruptionsAllowed"]
        == 1
    )


def test_scaled_value() -> None:
    assert scaled_value("25%", 10, round_up=True) == 3
    assert scaled_value("25%", 10, round_up=False) == 2
    assert scaled_value(4, 10, round_up=True) == 4
    with pytest.raises(ValueError, match="IntOrString"):
        scaled_value("lots", 10, round_up=True)


def _charged(**status: Any) -> dict[str, Any]:
    pdb = _pdb(maxUnavailable=1)
    pdb["status"] = {"observedGeneration": 1, "currentHealthy": 3, "desiredHealthy": 2, **status}
    return pdb


def test_eviction_charges_the_budget() -> None:
    decision = decide_eviction(_pod("a"), [_charged(disruptionsAllowed=1)], now=NOW)
    assert decision.pdb_name == "web"
    assert decision.pdb_status is not None
    assert decision.pdb_status["disruptionsAllowed"] == 0
    assert decision.pdb_status["disruptedPods"] == {"a": NOW}


def test_eviction_refused_when_no_disruption_is_allowed() -> None:
    with pytest.raises(ApiError) as refused:
        decide_eviction(_pod("a"), [_charged(disruptionsAllowed=0, currentHealthy=2)], now=NOW)
    assert refused.value.code == 429
    cause = refused.value.status()["details"]["causes"][0]
    assert cause == {
        "reason": "DisruptionBudget",
        "message": "The disruption budget web needs 2 healthy pods and has 2 currently",
    }


@pytest.mark.parametrize(
    ("pod", "pdbs", "code"),
    [
        (_pod("a"), [_charged(disruptionsAllowed=1), _charged(disruptionsAllowed=1)], 500),
        (_pod("a"), [_charged(disruptionsAllowed=-1)], 403),
        (
            _pod("a"),
            [
                {
                    **_charged(disruptionsAllowed=1),
                    "metadata": {"name": "web", "namespace": "ns", "generation": 2},
                }
            ],
            429,
        ),
    ],
)
def test_eviction_errors(pod: dict[str, Any], pdbs: list[dict[str, Any]], code: int) -> None:
    with pytest.raises(ApiError) as error:
        decide_eviction(pod, pdbs, now=NOW)
    assert error.value.code == code


@pytest.mark.parametrize(
    "pod",
    [_pod("a", phase="Pending"), _pod("a", phase="Succeeded"), _pod("a", terminating=True)],
)
def test_pods_that_cannot_disrupt_bypass_the_budget(pod: dict[str, Any]) -> None:
    decision = decide_eviction(pod, [_charged(disruptionsAllowed=0)], now=NOW)
    assert decision.pdb_status is None


def test_unready_pods_and_the_unhealthy_pod_eviction_policy() -> None:
    unready = _pod("a", ready=False)
    # IfHealthyBudget: allowed without charge while the budget is met...
    assert decide_eviction(unready, [_charged(disruptionsAllowed=0)], now=NOW).pdb_status is None
    # ...refused when it is not
    with pytest.raises(ApiError):
        decide_eviction(unready, [_charged(disruptionsAllowed=0, currentHealthy=1)], now=NOW)
    always = _charged(disruptionsAllowed=0, currentHealthy=1)
    always["spec"]["unhealthyPodEvictionPolicy"] = "AlwaysAllow"
    assert decide_eviction(unready, [always], now=NOW).pdb_status is None
