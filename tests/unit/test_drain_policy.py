"""The drain's pure parts: which pods move, their grace, what a refusal means, the result."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest

from spotguard.kube.client import KubeError
from spotguard.kube.drain import (
    DrainOutcome,
    DrainResult,
    PodOutcome,
    PodReport,
    backoff,
    overall_result,
)
from spotguard.kube.pods import (
    DrainOptions,
    PodRef,
    Refusal,
    SkipReason,
    classify_refusal,
    delete_body,
    eviction_body,
    grace_for,
    own_grace,
    pdb_wait_fits,
    skip_reason,
)


def _pod(
    name: str = "p",
    *,
    owner: str | None = "ReplicaSet",
    controller: bool = True,
    annotations: Mapping[str, str] | None = None,
    phase: str = "Running",
    terminating: bool = False,
    volumes: list[dict[str, Any]] | None = None,
    grace: Any = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": f"uid-{name}"}
    if owner:
        meta["ownerReferences"] = [
            {"kind": owner, "name": "x", "uid": "o", "controller": controller}
        ]
    if annotations:
        meta["annotations"] = dict(annotations)
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:30Z"
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox"}]}
    if volumes:
        spec["volumes"] = volumes
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


DEFAULT = DrainOptions()
STRICT = DrainOptions(evict_unmanaged=False, evict_emptydir=False, self_pod=("ns", "agent"))


@pytest.mark.parametrize(
    ("pod", "options", "expected"),
    [
        (_pod(), DEFAULT, None),
        (_pod("agent", owner="DaemonSet"), STRICT, SkipReason.SELF),
        (
            _pod(annotations={"kubernetes.io/config.mirror": "abc"}, owner="Node"),
            DEFAULT,
            SkipReason.MIRROR,
        ),
        (_pod(owner="DaemonSet"), DEFAULT, SkipReason.DAEMONSET),
        # An owner that is not the controller does not make it DaemonSet-managed (nor managed).
        (_pod(owner="DaemonSet", controller=False), DEFAULT, None),
        (_pod(owner="DaemonSet", controller=False), STRICT, SkipReason.UNMANAGED),
        (_pod(phase="Succeeded"), DEFAULT, SkipReason.FINISHED),
        (_pod(phase="Failed", owner=None), STRICT, SkipReason.FINISHED),
        (_pod(terminating=True), DEFAULT, SkipReason.TERMINATING),
        (_pod(owner=None), DEFAULT, None),
        (_pod(owner=None), STRICT, SkipReason.UNMANAGED),
        (_pod(volumes=[{"name": "d", "emptyDir": {}}]), DEFAULT, None),
        (_pod(volumes=[{"name": "d", "emptyDir": {}}]), STRICT, SkipReason.EMPTYDIR),
        (_pod(volumes=[{"name": "c", "configMap": {"name": "c"}}]), STRICT, None),
        (_pod("agent"), DEFAULT, None),  # self_pod unset: an ordinary pod
    ],
)
def test_skip_rules(
    pod: dict[str, Any], options: DrainOptions, expected: SkipReason | None
) -> None:
    assert skip_reason(pod, options) is expected


@pytest.mark.parametrize(
    ("given", "expected"), [(None, 30), (0, 0), (120, 120), (-1, 30), (True, 30), ("5", 30)]
)
def test_own_grace_defaults_to_thirty_seconds(given: Any, expected: int) -> None:
    pod = _pod()
    if given is not None:
        pod["spec"]["terminationGracePeriodSeconds"] = given
    assert own_grace(pod) == expected


@pytest.mark.parametrize(
    ("own", "left", "expected"),
    [
        (30, 25.9, 25),  # whole seconds left
        (10, 25.9, 10),  # its own, when that fits
        (120, 7.2, 7),
        (30, 0.4, 1),  # never 0 from the arithmetic: that would be a force delete
        (30, -3.0, 1),
        (0, 10.0, 0),  # a pod that asks for 0 gets 0
        (30, float("inf"), 30),
    ],
)
def test_grace_is_its_own_or_the_time_left(own: int, left: float, expected: int) -> None:
    assert grace_for(own, left) == expected


def test_grace_minimum_is_configurable() -> None:
    assert grace_for(30, 0.4, minimum=0) == 0
    assert grace_for(30, 0.4, minimum=2) == 2


def test_pdb_wait_fits_while_the_time_to_stop_does() -> None:
    # A short grace is the time the pod needs.
    assert pdb_wait_fits(now=100.0, pause=0.3, own=2, deadline=106.0, stop_budget=3.0)
    assert not pdb_wait_fits(now=103.8, pause=0.3, own=2, deadline=106.0, stop_budget=3.0)
    # A long grace is capped at the stop budget: a 30 s grace in a 25 s window still waits
    # for the budget until 3 s are left, instead of giving up at once.
    assert pdb_wait_fits(now=100.0, pause=0.1, own=30, deadline=125.0, stop_budget=3.0)
    assert pdb_wait_fits(now=121.5, pause=0.4, own=30, deadline=125.0, stop_budget=3.0)
    assert not pdb_wait_fits(now=121.7, pause=0.4, own=30, deadline=125.0, stop_budget=3.0)


def _error(
    status: int,
    message: str = "",
    *,
    causes: list[str] | None = None,
    details: dict[str, Any] | None = None,
    retry_after: float | None = None,
) -> KubeError:
    body: dict[str, Any] = {"kind": "Status", "message": message, "code": status}
    if causes is not None or details is not None:
        body["details"] = {**(details or {}), "causes": [{"reason": c} for c in causes or ()]}
    return KubeError(status, message, body=body, retry_after=retry_after)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_error(404, 'pods "p" not found'), Refusal.GONE),
        (
            _error(409, "Precondition failed: UID in precondition: a, UID in object meta: b"),
            Refusal.GONE,
        ),
        (_error(409, "the object has been modified"), Refusal.TRANSIENT),
        (_error(429, "Cannot evict pod", causes=["DisruptionBudget"]), Refusal.PDB),
        (_error(429, "Too many requests", retry_after=1), Refusal.THROTTLED),
        (
            _error(500, "This pod has more than one PodDisruptionBudget, which the eviction"),
            Refusal.PDB_MISCONFIGURED,
        ),
        (
            _error(
                403, "pdb disruptions allowed is negative", details={"kind": "poddisruptionbudgets"}
            ),
            Refusal.PDB_MISCONFIGURED,
        ),
        (_error(500, "etcdserver: request timed out"), Refusal.TRANSIENT),
        (_error(503, "unavailable"), Refusal.TRANSIENT),
        (KubeError(0, "no answer within 2s"), Refusal.TRANSIENT),
        (_error(403, "forbidden: User cannot create pods/eviction"), Refusal.FATAL),
        (_error(422, "invalid"), Refusal.FATAL),
    ],
)
def test_refusals(error: KubeError, expected: Refusal) -> None:
    assert classify_refusal(error) is expected


def test_request_bodies_carry_the_grace_and_the_uid_precondition() -> None:
    ref = PodRef("ns", "p", "uid-p")
    assert eviction_body(ref, 7) == {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "p", "namespace": "ns"},
        "deleteOptions": {"gracePeriodSeconds": 7, "preconditions": {"uid": "uid-p"}},
    }
    assert delete_body(ref, 3) == {
        "apiVersion": "v1",
        "kind": "DeleteOptions",
        "gracePeriodSeconds": 3,
        "preconditions": {"uid": "uid-p"},
    }


def test_backoff_is_short_jittered_and_bounded() -> None:
    options = DrainOptions(retry_min=0.1, retry_max=0.5)
    rng = random.Random(7)
    first = [backoff(0, options, rng) for _ in range(200)]
    later = [backoff(n, options, rng) for n in range(3, 40) for _ in range(10)]
    assert all(0.05 <= p <= 0.1 for p in first)
    assert all(0.25 <= p <= 0.5 for p in later)
    assert len({round(p, 6) for p in first}) > 100  # jittered, not in lockstep


@pytest.mark.parametrize(
    "bad",
    [
        {"concurrency": 0},
        {"request_timeout": 0},
        {"retry_min": 0},
        {"retry_min": 1.0, "retry_max": 0.5},
        {"min_grace": -1},
        {"min_window": -0.5},
    ],
)
def test_options_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the field
        DrainOptions(**bad)


def _report(outcome: PodOutcome, *, asked: bool = False) -> PodReport:
    return PodReport("ns", outcome.value, "u", outcome, asked_at=1.0 if asked else None)


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([], DrainResult.DRAINED),
        ([PodOutcome.SKIPPED], DrainResult.DRAINED),
        ([PodOutcome.EVICTED, PodOutcome.DELETED_AFTER_PDB, PodOutcome.GONE], DrainResult.DRAINED),
        ([PodOutcome.EVICTED, PodOutcome.STILL_PRESENT], DrainResult.PARTIAL),
        ([PodOutcome.EVICTED, PodOutcome.BLOCKED], DrainResult.PARTIAL),
        ([PodOutcome.BLOCKED, PodOutcome.FAILED], DrainResult.FAILED),
        ([PodOutcome.SKIPPED, PodOutcome.FAILED], DrainResult.FAILED),
    ],
)
def test_overall_result(outcomes: list[PodOutcome], expected: DrainResult) -> None:
    assert overall_result([_report(o) for o in outcomes], listed=True) is expected


def test_overall_result_counts_pods_asked_but_still_terminating_as_partial() -> None:
    reports = [_report(PodOutcome.STILL_PRESENT, asked=True)]
    assert overall_result(reports, listed=True) is DrainResult.PARTIAL
    assert overall_result([_report(PodOutcome.STILL_PRESENT)], listed=True) is DrainResult.FAILED
    assert overall_result([], listed=False) is DrainResult.FAILED


def test_drain_outcome_is_frozen_and_counts_every_outcome() -> None:
    pods = (_report(PodOutcome.EVICTED), _report(PodOutcome.SKIPPED), _report(PodOutcome.EVICTED))
    outcome = DrainOutcome(
        node="n",
        result=DrainResult.DRAINED,
        pods=pods,
        deadline=1.0,
        started_at=0.0,
        finished_at=0.5,
        first_request_at=0.01,
        all_asked_at=0.02,
        empty_at=0.1,
        api_requests=4,
        dry_run=False,
    )
    with pytest.raises(AttributeError):
        outcome.result = DrainResult.FAILED  # type: ignore[misc]
    assert outcome.counts == {
        **dict.fromkeys((o.value for o in PodOutcome), 0),
        "evicted": 2,
        "skipped": 1,
    }
    assert outcome.with_outcome(PodOutcome.SKIPPED) == (pods[1],)
