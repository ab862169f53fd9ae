"""The API server fails for a while just as a Preempt arrives, and the agent still drains the
node before the deadline.

Three seconds of trouble: every request answered 503, then every connection dropped, then, while
reads and evictions work again, node writes (the cordon) still fail — the way a recovering API
server or a node admission webhook behaves. Faults are matched on the agent's User-Agent, so the
harness's own watches keep recording.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.e2e.agent_harness import (
    OBSERVATION_SLACK,
    SAFETY_MARGIN,
    agent_harness,
    node_name,
    not_before,
    notices_of,
    reason_counts,
    wait_node_drained,
)

NOTICE = 9.0
FAULT_PHASE = 1.0  # seconds of each kind of failure


async def test_drain_completes_although_the_api_server_fails_for_a_while(tmp_path: Path) -> None:
    node = node_name(0)
    async with agent_harness(tmp_path) as h:
        agent = h.agent(0)
        control = h.cluster.control
        user_agent = await h.cluster.agent_user_agent()
        match = {"user_agent": user_agent}

        injected_at = time.time()
        event = await h.imds.inject("Preempt", not_before_in=NOTICE)
        event_id = event["event_id"]
        deadline = not_before(event) - SAFETY_MARGIN
        pods = h.cluster.pods_of(node, before=injected_at)

        phases = [
            {"match": match, "status": 503, "message": "etcd leader changed"},
            {"match": match, "drop": True},
            {"match": {**match, "verb": "patch", "resource": "nodes"}, "status": 503},
        ]
        hits = {}
        for spec in phases:
            rule = await control.add_fault(**spec)
            await asyncio.sleep(FAULT_PHASE)
            hits[len(hits)] = next(
                f["hits"] for f in await control.faults() if f["id"] == rule["id"]
            )
            await control.remove_fault(rule["id"])
        # The faults did hit the agent, during the notice it was acting on.
        assert all(hits.values()), hits

        last_gone = await wait_node_drained(h, node, event_id, pods, timeout=NOTICE)
        assert last_gone <= deadline + OBSERVATION_SLACK, (
            f"last pod gone {last_gone - deadline:+.2f}s after the deadline"
        )
        # Nothing came back: replacements land on this node only while it is not cordoned.
        arrived = [
            p.key for p in h.cluster.pods.values() if p.node == node and p.first_seen > injected_at
        ]
        assert arrived == [], (
            f"{len(arrived)} pods were scheduled onto the node during its drain, e.g. {arrived[:3]}"
        )
        obj = await h.cluster.node(node)
        assert obj["spec"]["unschedulable"] is True
        assert notices_of(obj)[event_id]["phase"] == "drained"
        counts = reason_counts(await h.cluster.spotguard_events(node, event_id))
        assert counts.get("SpotguardDrained") == 1, counts
        metrics = await agent.metrics()
        assert metrics['spotguard_drains_total{kind="preempt",outcome="drained"}'] == 1
        assert await agent.status("/healthz") == 200

        async def ready() -> bool:
            return await agent.status("/readyz") == 200

        await h.wait_for(ready, timeout=5, what="/readyz 200 once the API server is back")
