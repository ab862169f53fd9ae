"""A Reboot cancelled while Scheduled (Azure removes it from the document): the agent undoes what
it did — taint and annotation entry gone, node uncordoned — but only a cordon that was its own.

These agents poll every 250 ms, so the notice and its cancellation are seen sooner and the test
stays short; nothing here depends on the interval.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.agent_harness import (
    Harness,
    agent_harness,
    node_name,
    notices_of,
    reason_counts,
    spotguard_taints,
)

FAST_POLL = {"SPOTGUARD_POLL_INTERVAL": "250ms"}
#: A Reboot's notice is 15 min on Azure; a minute keeps the drain in progress when cancelled.
NOTICE = 60
SPOT_TAINT = "kubernetes.azure.com/scalesetpriority"
AKS_REMEDIATOR_TAINT = "remediator.kubernetes.azure.com/unschedulable"


async def _cordoned_and_draining(h: Harness, node: str, event_id: str) -> None:
    await h.wait_for(
        lambda: h.cluster.first(
            node,
            lambda s: (
                event_id in s.notices and any(t["key"] == "spotguard.io/reboot" for t in s.taints)
            ),
        ),
        timeout=5,
        what="the Reboot's taint and annotation entry",
    )
    await h.wait_for(
        lambda: any(p.terminating_at for p in h.cluster.pods_of(node)),
        timeout=5,
        what="the drain to ask a first pod to leave",
    )


async def test_cancelled_reboot_uncordons_the_node(tmp_path: Path) -> None:
    node = node_name(0)
    async with agent_harness(tmp_path, env=FAST_POLL) as h:
        event = await h.imds.inject("Reboot", not_before_in=NOTICE)
        event_id = event["event_id"]
        await _cordoned_and_draining(h, node, event_id)
        obj = await h.cluster.node(node)
        assert obj["spec"]["unschedulable"] is True
        assert notices_of(obj)[event_id]["cordoned_by_us"] is True

        await h.imds.cancel(event_id)

        async def undone() -> bool:
            obj = await h.cluster.node(node)
            return (
                not obj["spec"].get("unschedulable")
                and not spotguard_taints(obj)
                and event_id not in notices_of(obj)
            )

        await h.wait_for(undone, timeout=5, what="taint, annotation entry and cordon to go")
        obj = await h.cluster.node(node)
        # Only our own taint went: the spot pool's taint is AKS's.
        assert [t["key"] for t in obj["spec"]["taints"]] == [SPOT_TAINT]

        # Events are recorded beside the work, not before it: give the last one a moment.
        async def uncordoned_event() -> bool:
            counts = reason_counts(await h.cluster.spotguard_events(node, event_id))
            return "SpotguardUncordoned" in counts

        await h.wait_for(uncordoned_event, timeout=5, what="the SpotguardUncordoned Event")
        counts = reason_counts(await h.cluster.spotguard_events(node, event_id))
        assert counts.get("SpotguardCordoned") == 1, counts
        assert counts.get("SpotguardUncordoned") == 1, counts
        assert "SpotguardDrained" not in counts  # it was cancelled mid-drain
        metrics = await h.agent(0).metrics()
        assert metrics['spotguard_active_notices{kind="reboot"}'] == 0
        assert metrics['spotguard_actions_total{action="uncordon",outcome="success"}'] == 1
        assert h.agent(0).errors() == [], h.agent(0).errors()


async def test_cancelled_reboot_leaves_someone_elses_cordon(tmp_path: Path) -> None:
    """AKS node auto-drain cordoned the node first: it is not ours to uncordon."""
    node = node_name(0)
    async with agent_harness(tmp_path, env=FAST_POLL, start_agents=False) as h:
        await h.cluster.patch_node(
            node,
            {
                "spec": {
                    "unschedulable": True,
                    "taints": [
                        {"key": SPOT_TAINT, "value": "spot", "effect": "NoSchedule"},
                        {"key": AKS_REMEDIATOR_TAINT, "effect": "NoSchedule"},
                    ],
                }
            },
        )
        await h.agent(0).start()
        event = await h.imds.inject("Reboot", not_before_in=NOTICE)
        event_id = event["event_id"]
        await _cordoned_and_draining(h, node, event_id)
        assert notices_of(await h.cluster.node(node))[event_id]["cordoned_by_us"] is False

        await h.imds.cancel(event_id)

        async def cleaned_up() -> bool:
            obj = await h.cluster.node(node)
            return not spotguard_taints(obj) and event_id not in notices_of(obj)

        await h.wait_for(cleaned_up, timeout=5, what="our taint and annotation entry to go")
        obj = await h.cluster.node(node)
        assert obj["spec"]["unschedulable"] is True
        assert sorted(t["key"] for t in obj["spec"]["taints"]) == sorted(
            [SPOT_TAINT, AKS_REMEDIATOR_TAINT]
        )
        counts = reason_counts(await h.cluster.spotguard_events(node, event_id))
        assert "SpotguardUncordoned" not in counts, counts
        assert h.agent(0).errors() == [], h.agent(0).errors()
