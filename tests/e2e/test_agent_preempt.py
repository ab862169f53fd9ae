"""A Preempt for this VM: the real agent drains its node before the notice's deadline.

The notice is 8 s (Azure gives up to 30 s; the demo plays the long one). The emulated kubelet
lets every pod use its whole grace period (no ``stop_after``), so the pods leave exactly when the
grace the agent chose runs out: the test sees whether that choice fits the deadline.
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
    notices_of,
    parse_time,
    reason_counts,
    spotguard_taints,
    wait_node_drained,
)

NOTICE = 8.0


async def test_preempt_drains_the_node_before_the_deadline(tmp_path: Path) -> None:
    node = node_name(0)
    async with agent_harness(tmp_path) as h:
        agent = h.agent(0)
        injected_at = time.time()
        event = await h.imds.inject("Preempt", not_before_in=NOTICE)
        event_id = event["event_id"]
        deadline = not_before(event) - SAFETY_MARGIN
        pods = h.cluster.pods_of(node, before=injected_at)
        assert len(pods) == 7  # the spot-node scenario's pods that must move

        last_gone = await wait_node_drained(h, node, event_id, pods, timeout=NOTICE + 5)

        # Every pod left before the deadline the agent works to (NotBefore - safety margin).
        assert last_gone <= deadline + OBSERVATION_SLACK, (
            f"last pod gone {last_gone - deadline:+.2f}s after the deadline"
        )
        assert last_gone < not_before(event)
        # Each pod was asked with a grace that fits: min(its own, time left).
        for pod in pods:
            assert pod.terminating_at is not None, f"{pod.key} was never asked to leave"
            assert pod.grace is not None
            assert pod.terminating_at + pod.grace <= deadline + OBSERVATION_SLACK, pod
        # Cordoned before the drain.
        cordoned = h.cluster.first(node, lambda s: s.unschedulable)
        assert cordoned is not None
        assert cordoned.at <= min(p.terminating_at or 0 for p in pods) + OBSERVATION_SLACK

        # The durable state: cordon, taint, annotation, one Event per step.
        obj = await h.cluster.node(node)
        assert obj["spec"]["unschedulable"] is True
        assert [(t["key"], t["value"], t["effect"]) for t in spotguard_taints(obj)] == [
            ("spotguard.io/preempt", event_id, "NoSchedule")
        ]
        record = notices_of(obj)[event_id]
        assert record["kind"] == "preempt"
        assert record["phase"] == "drained"
        assert record["cordoned_by_us"] is True
        assert parse_time(record["deadline"]) == deadline
        events = await h.cluster.spotguard_events(node, event_id)
        counts = reason_counts(events)
        for reason in ("SpotguardNotice", "SpotguardCordoned", "SpotguardDrained"):
            assert counts.get(reason) == 1, counts
        assert "SpotguardDrainFailed" not in counts
        # DaemonSet pods stay: their controller would put them straight back.
        left = {p["metadata"]["name"] for p in await h.cluster.pods_on(node)}
        assert left == {"kube-proxy-ax7k2", "spotguard-agent-a9q4m"}

        # Preempt's default policy does not acknowledge: NotBefore is left to arrive.
        assert await h.imds.acknowledgements(event_id) == []

        metrics = await agent.metrics()
        assert metrics['spotguard_notices_total{kind="preempt",source="imds"}'] == 1
        assert metrics['spotguard_drains_total{kind="preempt",outcome="drained"}'] == 1
        assert metrics['spotguard_drains_total{kind="preempt",outcome="failed"}'] == 0
        assert metrics["spotguard_deadline_margin_seconds_count{}"] == 1
        assert metrics["spotguard_deadline_missed_seconds_count{}"] == 0
        assert metrics['spotguard_actions_total{action="cordon",outcome="success"}'] >= 1
        assert metrics['spotguard_actions_total{action="evict",outcome="success"}'] >= 1
        assert await agent.status("/healthz") == 200
        assert agent.errors() == [], agent.errors()
