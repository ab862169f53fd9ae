"""A PodDisruptionBudget that refuses at first and frees up within the notice must not leave its
pod behind.

Terminate's policy does not delete a pod its PDB protects: it evicts, and retries refusals. Here
the replacements of a Deployment behind a ``maxUnavailable: 1`` budget take 2 s to become Ready
(real pods take longer), so the budget allows one eviction every ~2 s: all three replicas can
leave well inside a 15 s notice — if refusals keep being retried while the deadline allows an
eviction with a grace cut to the time left, as every other pod's grace is.

A budget that never frees up (replacements never become Ready) under a Preempt: its default
policy (``delete_on_pdb_block``) deletes the pods the budget still keeps once only their stop time
is left before the deadline, and not before.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.agent_harness import (
    OBSERVATION_SLACK,
    SAFETY_MARGIN,
    agent_harness,
    node_name,
    not_before,
    parse_time,
    wait_node_drained,
)

NOTICE = 15.0
READY_AFTER = 2.0


async def test_pdb_that_frees_up_within_the_notice_does_not_leave_its_pod(tmp_path: Path) -> None:
    node = node_name(0)
    # Pods stop 1 s after they are asked; replacements are Ready 2 s after they are placed.
    settings = {"stop_after": 1.0, "ready_after": READY_AFTER}
    async with agent_harness(tmp_path, emulator=settings) as h:
        injected_at = time.time()
        event = await h.imds.inject("Terminate", not_before_in=NOTICE)
        event_id = event["event_id"]
        deadline = not_before(event) - SAFETY_MARGIN
        pods = h.cluster.pods_of(node, before=injected_at)
        web = [p for p in pods if p.name.startswith("web-")]
        assert len(web) == 3

        last_gone = await wait_node_drained(h, node, event_id, pods, timeout=NOTICE)
        assert last_gone <= deadline + OBSERVATION_SLACK
        refusals = [
            r
            for r in await h.cluster.agent_requests()
            if r["subresource"] == "eviction" and r["status"] == 429
        ]
        assert refusals, "the budget never refused: the test did not test anything"
        # Evicted, not deleted: Terminate's policy honours the budget.
        deletes = [
            r
            for r in await h.cluster.agent_requests()
            if r["verb"] == "delete" and r["resource"] == "pods"
        ]
        assert deletes == []
        # Only this VM in Resources: acknowledged once drained (DESIGN.md's first path).
        drained_at = h.cluster.phase_at(node, event_id, "drained")
        assert drained_at is not None
        acks = await h.wait_for(
            lambda: h.imds.acknowledgements(event_id), timeout=3, what="the acknowledgement"
        )
        assert len(acks) == 1, acks
        assert parse_time(acks[0]["wall"]) >= drained_at - 0.2
        assert h.agent(0).errors() == [], h.agent(0).errors()


# --- a budget that never frees up: Preempt's default policy deletes what the deadline forces ---

PREEMPT_NOTICE = 8.0
#: DrainOptions' defaults (the agent's config does not change them): a PDB refusal is retried
#: until only the stop budget (or the pod's own grace, if shorter; here 10 s) is left before the
#: deadline, pausing up to retry_max between tries.
STOP_BUDGET = 3.0
RETRY_MAX = 0.5


@pytest.mark.slow
async def test_preempt_deletes_what_a_budget_that_never_frees_up_keeps(tmp_path: Path) -> None:
    """Replacements never become Ready (a cluster waiting for a scale-up): ``web``'s budget
    (maxUnavailable 1) allows one eviction and then refuses for good. Preempt's default policy
    (``delete_on_pdb_block``) keeps retrying the refused pods while their stop time still fits,
    then deletes them with the grace that is left, so that the node is empty when the VM goes."""
    node = node_name(0)
    async with agent_harness(tmp_path, emulator={"ready_after": 3600.0}) as h:
        agent = h.agent(0)
        mark = await h.cluster.control.mark()
        injected_at = time.time()
        event = await h.imds.inject("Preempt", not_before_in=PREEMPT_NOTICE)
        event_id = event["event_id"]
        deadline = not_before(event) - SAFETY_MARGIN
        pods = h.cluster.pods_of(node, before=injected_at)
        web = {p.name for p in pods if p.name.startswith("web-")}
        assert len(web) == 3

        last_gone = await wait_node_drained(h, node, event_id, pods, timeout=PREEMPT_NOTICE + 5)
        assert last_gone <= deadline + OBSERVATION_SLACK, (
            f"last pod gone {last_gone - deadline:+.2f}s after the deadline"
        )
        assert last_gone < not_before(event)

        requests = [r for r in await h.cluster.agent_requests(mark) if r["resource"] == "pods"]
        evictions = [r for r in requests if r["subresource"] == "eviction"]
        evicted = {r["name"] for r in evictions if r["status"] == 201}
        deletes = [r for r in requests if r["verb"] == "delete" and r["subresource"] is None]
        deleted = {r["name"] for r in deletes}
        # The budget allowed exactly one of web's pods out; the other two were deleted, and no
        # other pod was.
        assert len(evicted & web) == 1, evicted
        assert deleted == web - evicted, (deleted, evicted)
        assert all(r["status"] == 200 for r in deletes), deletes
        assert len(deletes) == 2, deletes
        for delete in deletes:
            name = delete["name"]
            sent = parse_time(delete["at"])
            asked = [r for r in evictions if r["name"] == name]
            # Refused by the budget (and only by it) first, while the pod's stop time fitted...
            assert len(asked) >= 2, (name, asked)
            assert all(r["status"] == 429 for r in asked), (name, asked)
            last_refusal = max(parse_time(r["at"]) for r in asked)
            assert last_refusal < sent, name
            # (the last refusal was retried: its stop time still fitted then)
            assert last_refusal + STOP_BUDGET <= deadline + OBSERVATION_SLACK, name
            # ...and deleted only when the next retry would no longer have left it that time.
            assert sent >= deadline - STOP_BUDGET - RETRY_MAX - OBSERVATION_SLACK, (
                f"{name} deleted {deadline - sent:.2f}s before the deadline: too early"
            )
            assert sent < deadline, f"{name} deleted {sent - deadline:+.2f}s after the deadline"
        # With a grace that ends before the deadline.
        for pod in pods:
            if pod.name in deleted:
                assert pod.terminating_at is not None, pod
                assert pod.grace is not None, pod
                assert pod.terminating_at + pod.grace <= deadline + OBSERVATION_SLACK, pod

        # The agent says so: per pod, in the drain's outcome, in the Event and the metrics.
        said = {line["pod"] for line in agent.events("pod_delete_after_pdb")}
        assert said == {f"shop/{name}" for name in deleted}, said
        (finished,) = agent.events("drain_finished")
        assert finished["result"] == "drained", finished
        assert finished["counts"].get("deleted_after_pdb") == 2, finished
        (drained,) = agent.events("notice_drained")
        assert drained["deleted_after_pdb"] == 2, drained
        events = await h.cluster.spotguard_events(node, event_id)
        messages = [e["message"] for e in events if e["reason"] == "SpotguardDrained"]
        assert len(messages) == 1, messages
        assert "2 deleted after PDB refusals" in messages[0], messages
        metrics = await agent.metrics()
        assert metrics['spotguard_actions_total{action="delete",outcome="success"}'] == 2
        assert metrics['spotguard_drains_total{kind="preempt",outcome="drained"}'] == 1
        assert agent.errors() == [], agent.errors()
