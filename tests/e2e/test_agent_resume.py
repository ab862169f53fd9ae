"""The agent dies mid-drain and comes back: it resumes from the node's annotation, does not redo
what was done (no second request to leave for a pod already terminating, no duplicate Events)
and still drains the node before the deadline. Also: SIGTERM mid-drain ends it promptly (well
within a pod's grace period), with its phase recorded.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from tests.e2e.agent_harness import (
    OBSERVATION_SLACK,
    SAFETY_MARGIN,
    Harness,
    agent_harness,
    node_name,
    not_before,
    notices_of,
    reason_counts,
    wait_node_drained,
    writes,
)

NOTICE = 8.0
#: How long a SIGTERMed agent may take to exit (the DaemonSet's grace is longer; be strict).
EXIT_WITHIN = 5.0


async def _mid_drain(h: Harness, node: str, event_id: str, injected_at: float) -> set[str]:
    """Wait until the annotation says draining (checkpointing: the scenario has pipeline steps)
    and some pods are leaving; their keys."""
    await h.wait_for(
        lambda: (
            h.cluster.phase_at(node, event_id, "draining")
            or h.cluster.phase_at(node, event_id, "checkpointing")
        ),
        timeout=NOTICE / 2,
        what="the draining phase",
    )
    asked = await h.wait_for(
        lambda: {p.key for p in h.cluster.pods_of(node, before=injected_at) if p.terminating_at},
        timeout=NOTICE / 2,
        what="a pod asked to leave",
    )
    assert isinstance(asked, set)
    return asked


async def test_sigkill_mid_drain_then_restart_resumes_without_duplicates(tmp_path: Path) -> None:
    node = node_name(0)
    async with agent_harness(tmp_path) as h:
        agent = h.agent(0)
        injected_at = time.time()
        event = await h.imds.inject("Preempt", not_before_in=NOTICE)
        event_id = event["event_id"]
        deadline = not_before(event) - SAFETY_MARGIN
        pods = h.cluster.pods_of(node, before=injected_at)

        asked = await _mid_drain(h, node, event_id, injected_at)
        assert await agent.kill() == -signal.SIGKILL
        killed_at = time.time()
        mark = await h.cluster.control.mark()
        # Mid-drain indeed: pods with their whole (capped) grace are still stopping.
        assert any(p.gone_at is None for p in pods)

        await agent.start()
        last_gone = await wait_node_drained(h, node, event_id, pods, timeout=NOTICE)
        assert last_gone <= deadline + OBSERVATION_SLACK, (
            f"last pod gone {last_gone - deadline:+.2f}s after the deadline "
            f"(agent killed {deadline - killed_at:.1f}s before it)"
        )

        # Nothing done twice: every Event once (deterministic names; a second create is a 409)
        events = await h.cluster.spotguard_events(node, event_id)
        counts = reason_counts(events)
        assert all(n == 1 for n in counts.values()), counts
        assert all(e.get("count", 1) == 1 for e in events), events
        for reason in ("SpotguardNotice", "SpotguardCordoned", "SpotguardDrained"):
            assert counts.get(reason) == 1, counts
        created = [
            e
            for e in writes(await h.cluster.agent_requests())
            if e["resource"] == "events" and e["verb"] == "create" and e["status"] == 201
        ]
        assert len(created) == len(events), (counts, created)
        after = await h.cluster.agent_requests(mark)
        # ...and no second request to leave for a pod that was already terminating.
        again = [
            e
            for e in writes(after)
            if e["resource"] == "pods"
            and e["verb"] in {"create", "delete"}
            and f"{e['namespace']}/{e['name']}" in asked
        ]
        assert again == [], again
        record = notices_of(await h.cluster.node(node))[event_id]
        assert record["phase"] == "drained"
        assert record["cordoned_by_us"] is True  # the restart did not mistake our cordon
        assert agent.errors() == [], agent.errors()


async def test_sigterm_mid_drain_exits_promptly_with_phase_recorded(tmp_path: Path) -> None:
    node = node_name(0)
    async with agent_harness(tmp_path) as h:
        agent = h.agent(0)
        injected_at = time.time()
        event = await h.imds.inject("Preempt", not_before_in=NOTICE)
        event_id = event["event_id"]
        pods = h.cluster.pods_of(node, before=injected_at)
        await _mid_drain(h, node, event_id, injected_at)

        loop = asyncio.get_running_loop()
        started = loop.time()
        code = await agent.stop(signal.SIGTERM, timeout=EXIT_WITHIN)
        took = loop.time() - started
        assert code == 0, f"exit code {code} after SIGTERM ({took:.1f}s)"
        assert took < EXIT_WITHIN
        record = notices_of(await h.cluster.node(node))[event_id]
        assert record["phase"] in {"checkpointing", "draining", "drained"}, record
        # Mid-drain indeed (resuming after a restart is the test above).
        assert any(p.gone_at is None for p in pods)
        assert agent.errors() == [], agent.errors()
