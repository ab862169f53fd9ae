"""Events the agent must not act on: a Preempt of another VM of the scale set (every VM of a
placement group sees it) and a Freeze of its own VM (policy: record only). Neither may write
anything to the cluster or acknowledge anything in IMDS."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e.agent_harness import (
    Harness,
    agent_harness,
    node_name,
    notices_of,
    spotguard_taints,
    vm_name,
    writes,
)

#: Time (polls of 1 s) to give the agent every chance to do something wrong.
QUIET_FOR = 1.5


async def _assert_untouched(h: Harness, mark: int) -> None:
    node = node_name(0)
    changes = [
        (e["verb"], e["path"], e["status"]) for e in writes(await h.cluster.agent_requests(mark))
    ]
    assert changes == []
    obj = await h.cluster.node(node)
    assert not obj["spec"].get("unschedulable")
    assert spotguard_taints(obj) == []
    assert notices_of(obj) == {}
    assert await h.cluster.spotguard_events(node) == []
    assert await h.imds.acknowledgements() == []
    assert all(p.terminating_at is None for p in h.cluster.pods_of(node))
    metrics = await h.agent(0).metrics()
    for action in ("cordon", "taint", "evict", "delete", "acknowledge"):
        for outcome in ("success", "error"):
            key = f'spotguard_actions_total{{action="{action}",outcome="{outcome}"}}'
            assert metrics[key] == 0, key
    assert await h.agent(0).status("/readyz") == 200
    assert h.agent(0).errors() == [], h.agent(0).errors()


async def test_another_vms_preempt_then_a_freeze_change_nothing(tmp_path: Path) -> None:
    # One agent for both (a start-up costs seconds): first the other VM's Preempt, checked on
    # its own, then this VM's Freeze.
    async with agent_harness(tmp_path) as h:
        agent = h.agent(0)
        # The start-up writes (if any) are behind us once the agent is ready; only what the
        # events provoke counts.
        mark = await h.cluster.control.mark()
        other = await h.imds.inject("Preempt", resources=[vm_name(7)], not_before_in=30)

        async def polled_since() -> bool:
            # The agent has fetched the document that carries the event.
            records = await h.imds.requests(vm_name(0))
            return any(r["path"].endswith("scheduledevents") for r in records)

        await h.imds.call("DELETE", "/requests")
        await h.wait_for(polled_since, timeout=5, what="a poll after the event appeared")
        await asyncio.sleep(QUIET_FOR)  # and time to act on it, if it wrongly would

        await _assert_untouched(h, mark)
        metrics = await agent.metrics()
        # Not this VM's notice at all: not even counted.
        assert metrics['spotguard_notices_total{kind="preempt",source="imds"}'] == 0
        assert metrics['spotguard_active_notices{kind="preempt"}'] == 0

        # Freeze: policy is record — counted and logged; nothing in the cluster changes.
        freeze = await h.imds.inject("Freeze", not_before_in=900, duration=5)

        async def freeze_seen() -> bool:
            return await agent.metric("spotguard_notices_total", kind="freeze", source="imds") == 1

        await h.wait_for(freeze_seen, timeout=5, what="the agent to count the Freeze")
        await asyncio.sleep(QUIET_FOR)

        await _assert_untouched(h, mark)
        # Neither was acknowledged: both are still there, the Freeze still Scheduled.
        assert sorted((e["event_id"], e["status"]) for e in await h.imds.events()) == sorted(
            [(other["event_id"], "Scheduled"), (freeze["event_id"], "Scheduled")]
        )
