"""A PodDisruptionBudget that refuses at first and frees up within the notice must not leave its
pod behind.

Terminate's policy does not delete a pod its PDB protects: it evicts, and retries refusals. Here
the replacements of a Deployment behind a ``maxUnavailable: 1`` budget take 2 s to become Ready
(real pods take longer), so the budget allows one eviction every ~2 s: all three replicas can
leave well inside a 15 s notice — if refusals keep being retried while the deadline allows an
eviction with a grace cut to the time left, as every other pod's grace is.
"""

from __future__ import annotations

import time
from pathlib import Path

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
