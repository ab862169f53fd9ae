"""One Terminate listing two of our VMs, one agent on each node, one IMDS placement group.

An acknowledgement starts the event for every VM in ``Resources``, so DESIGN.md allows it only
when every node named there records the event as drained. Node 1's pods take longer to stop than
node 0's, so node 0's agent finishes first and must not acknowledge alone; the acknowledgement
comes once node 1 is drained too, and it is what starts the event (before ``NotBefore``).

The notice is long enough (20 s) for the Deployment behind its PDB to move within its grace; the
test ends at the acknowledgement, well before ``NotBefore`` (a PDB that frees up late in the
notice is ``test_agent_pdb``'s subject).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from spotguard.sim.cluster_scenarios import owner_ref, pod_object, workload_object
from spotguard.sim.kube_settings import STOP_AFTER_ANNOTATION
from tests.e2e.agent_harness import (
    agent_harness,
    node_name,
    not_before,
    notices_of,
    parse_time,
    vm_name,
    wait_node_drained,
)

NOTICE = 20.0
#: Node 0's pods stop 1 s after they are asked (emulator setting), node 1's after this long.
SLOW_STOP = 5.0


def slow_pods_on_node_1(count: int = 3) -> list[dict[str, Any]]:
    labels = {"app": "slow-batch"}
    objects = [workload_object("ReplicaSet", "shop", "slow-batch", labels, replicas=count)]
    for i in range(count):
        objects.append(
            pod_object(
                "shop",
                f"slow-batch-{i}",
                node_name(1),
                f"10.244.1.{40 + i}",
                labels=labels,
                owner=owner_ref("ReplicaSet", "slow-batch"),
                grace=30,
                annotations={STOP_AFTER_ANNOTATION: f"{SLOW_STOP:g}"},
            )
        )
    return objects


async def test_shared_event_is_acknowledged_only_once_both_nodes_are_drained(
    tmp_path: Path,
) -> None:
    node0, node1 = node_name(0), node_name(1)
    async with agent_harness(
        tmp_path, nodes=(0, 1), seed=slow_pods_on_node_1(), emulator={"stop_after": 1.0}
    ) as h:
        injected_at = time.time()
        event = await h.imds.inject(
            "Terminate", resources=[vm_name(0), vm_name(1)], not_before_in=NOTICE
        )
        event_id = event["event_id"]
        pods0 = h.cluster.pods_of(node0, before=injected_at)
        pods1 = h.cluster.pods_of(node1, before=injected_at)
        assert len(pods1) == 3

        drained0 = await wait_node_drained(h, node0, event_id, pods0, timeout=NOTICE)
        drained1 = await wait_node_drained(h, node1, event_id, pods1, timeout=NOTICE)
        phase0 = h.cluster.phase_at(node0, event_id, "drained")
        phase1 = h.cluster.phase_at(node1, event_id, "drained")
        assert phase0 is not None
        assert phase1 is not None
        # The set-up worked: node 0 was drained well before node 1.
        assert phase1 - phase0 > 1.0, (drained0, drained1, phase0, phase1)

        async def acknowledged() -> list[dict[str, Any]]:
            return await h.imds.acknowledgements(event_id)

        acks = await h.wait_for(acknowledged, timeout=5, what="an acknowledgement")
        first = min(parse_time(a["wall"]) for a in acks)
        # Not while node 1 was still draining (the agent reads node 1's annotation just after
        # the write we saw; allow for our watch's delivery being slower than its GET).
        assert first >= phase1 - 0.2, f"acknowledged {phase1 - first:.2f}s before node 1 drained"
        assert first < not_before(event)
        # The acknowledgement is what started the event, and only one did.
        assert [a["started"] for a in acks].count(True) == 1, acks
        assert {a["vm"] for a in acks} <= {vm_name(0), vm_name(1)}
        # Both agents' records: drained, and the acknowledging node says so.
        for node in (node0, node1):
            record = notices_of(await h.cluster.node(node)).get(event_id)
            if record is not None:  # the entry may already be cleaned up after completion
                assert record["phase"] in {"drained", "acknowledged"}, record

        async def metrics_agree() -> bool:
            # Every acknowledgement IMDS accepted is counted by the agent that sent it (the
            # other agent may still be sending one: re-read both until they agree).
            total = 0.0
            for agent in h.agents.values():
                value = await agent.metric(
                    "spotguard_actions_total", action="acknowledge", outcome="success"
                )
                total += value or 0.0
            return total == len(await h.imds.acknowledgements(event_id))

        await h.wait_for(metrics_agree, timeout=3, what="ack metrics to match IMDS")
        for agent in h.agents.values():
            assert agent.errors() == [], agent.errors()
