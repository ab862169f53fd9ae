"""Node actions and Events through spotguard's own client, against the emulated API server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import structlog
from kubernetes_asyncio import client as k8s

from spotguard.kube.client import SMP, KubeClient, KubeError
from spotguard.kube.nodes import (
    NOTICES_ANNOTATION,
    NodeActions,
    NodeState,
    Phase,
)
from spotguard.sim.cluster import ClusterEmulator
from spotguard.sinks.events import EventRecorder, Reason, event_name

NODE = "aks-spot-12345678-vmss000003"
REMEDIATOR = {"key": "remediator.kubernetes.azure.com/unschedulable", "effect": "NoSchedule"}
SPOT = {"key": "kubernetes.azure.com/scalesetpriority", "value": "spot", "effect": "NoSchedule"}
DEADLINE = "2026-11-28T14:00:28.000Z"


class FixedClock:
    def now(self) -> datetime:
        return datetime(2026, 11, 28, 14, 0, 0, tzinfo=UTC)


def node_object(*, unschedulable: bool = False, taints: list[dict[str, str]] | None = None) -> dict:
    spec: dict = {"taints": taints if taints is not None else [SPOT]}
    if unschedulable:
        spec["unschedulable"] = True
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": spec}


@pytest.fixture
async def kube_client(emulator: ClusterEmulator) -> AsyncIterator[KubeClient]:
    kube = KubeClient(k8s.ApiClient(k8s.Configuration(host=emulator.url)), timeout=5)
    yield kube
    await kube.close()


def actions(kube: KubeClient, *, dry_run: bool = False) -> NodeActions:
    return NodeActions(kube=kube, node=NODE, dry_run=dry_run, log=structlog.get_logger())


def writes(emulator: ClusterEmulator, since: int = 0) -> list:
    return [r for r in emulator.requests.since(since) if r.verb in ("patch", "update", "create")]


def taint_keys(state: NodeState) -> list[str]:
    return sorted(str(t["key"]) for t in state.taints)


async def test_begin_cordons_taints_and_records_in_one_write(
    emulator: ClusterEmulator, kube_client: KubeClient
) -> None:
    emulator.seed(node_object())
    mark = emulator.requests.next_seq
    state = await actions(kube_client).begin(event_id="E1", kind="preempt", deadline=DEADLINE)
    assert state.unschedulable
    assert taint_keys(state) == ["kubernetes.azure.com/scalesetpriority", "spotguard.io/preempt"]
    taint = next(t for t in state.taints if t["key"] == "spotguard.io/preempt")
    assert (taint["value"], taint["effect"]) == ("E1", "NoSchedule")
    record = state.notices["E1"]
    assert (record.kind, record.phase, record.cordoned_by_us) == ("preempt", Phase.CORDONED, True)
    (patch,) = writes(emulator, mark)
    assert (patch.resource, patch.content_type) == ("nodes", SMP)
    fresh = await actions(kube_client).read()
    assert fresh == state
    annotation = json.loads(
        (await kube_client.request("GET", f"/api/v1/nodes/{NODE}"))["metadata"]["annotations"][
            NOTICES_ANNOTATION
        ]
    )
    assert annotation == {
        "v": 1,
        "notices": {
            "E1": {
                "kind": "preempt",
                "deadline": DEADLINE,
                "phase": "cordoned",
                "cordoned_by_us": True,
            }
        },
    }


async def test_node_cordoned_by_someone_else_is_not_ours_to_uncordon(
    emulator: ClusterEmulator, kube_client: KubeClient
) -> None:
    # AKS node auto-drain got there first.
    emulator.seed(node_object(unschedulable=True, taints=[SPOT, REMEDIATOR]))
    node = actions(kube_client)
    state = await node.begin(event_id="E1", kind="preempt", deadline=DEADLINE)
    assert state.notices["E1"].cordoned_by_us is False
    _, state = await node.finish("E1")
    assert state.unschedulable is True
    assert taint_keys(state) == sorted([REMEDIATOR["key"], SPOT["key"]])
    assert state.notices == {}


async def test_several_notices_share_cordon_and_taints_until_the_last(
    emulator: ClusterEmulator, kube_client: KubeClient
) -> None:
    emulator.seed(node_object())
    node = actions(kube_client)
    await node.begin(event_id="R1", kind="reboot", deadline=DEADLINE)
    await node.begin(event_id="R2", kind="reboot", deadline=DEADLINE)
    state = await node.begin(event_id="P1", kind="preempt", deadline=DEADLINE)
    assert taint_keys(state).count("spotguard.io/reboot") == 1
    assert all(r.cordoned_by_us for r in state.notices.values())

    _, state = await node.finish("R1")
    assert "spotguard.io/reboot" in taint_keys(state)  # R2 is still a reboot
    _, state = await node.finish("P1")
    assert "spotguard.io/preempt" not in taint_keys(state)
    assert state.unschedulable  # R2 still active
    _, state = await node.finish("R2")
    assert not state.unschedulable
    assert taint_keys(state) == [SPOT["key"]]
    assert NOTICES_ANNOTATION not in (
        (await kube_client.request("GET", f"/api/v1/nodes/{NODE}"))["metadata"].get("annotations")
        or {}
    )


async def test_resume_keeps_recorded_phase_and_writes_nothing_new(
    emulator: ClusterEmulator, kube_client: KubeClient
) -> None:
    emulator.seed(node_object())
    node = actions(kube_client)
    await node.begin(event_id="E1", kind="preempt", deadline=DEADLINE)
    await node.set_phase("E1", Phase.DRAINING)
    mark = emulator.requests.next_seq
    # A restarted agent starts over from the annotation.
    state = await actions(kube_client).begin(event_id="E1", kind="preempt", deadline=DEADLINE)
    assert state.notices["E1"].phase is Phase.DRAINING
    assert writes(emulator, mark) == []


async def test_conflicting_taint_writers_lose_nothing(
    emulator: ClusterEmulator, kube_client: KubeClient
) -> None:
    emulator.seed(node_object())

    async def other_actor(i: int) -> None:
        # Another controller doing the same read-modify-write dance on taints.
        for _ in range(50):
            node = await kube_client.request("GET", f"/api/v1/nodes/{NODE}")
            taints = [
                *node["spec"].get("taints", []),
                {"key": f"other/{i}", "effect": "NoSchedule"},
            ]
            patch = {
                "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                "spec": {"taints": taints},
            }
            try:
                await kube_client.request(
                    "PATCH", f"/api/v1/nodes/{NODE}", body=patch, content_type=SMP
                )
                return
            except KubeError as exc:
                if exc.status != 409:
                    raise
                await asyncio.sleep(0)
        raise AssertionError("other actor never got through")

    kinds = ["preempt", "reboot", "redeploy", "terminate", "freeze"]
    await asyncio.gather(
        *(actions(kube_client).begin(event_id=f"E-{k}", kind=k, deadline=DEADLINE) for k in kinds),
        *(other_actor(i) for i in range(5)),
    )
    state = await actions(kube_client).read()
    keys = taint_keys(state)
    assert {f"spotguard.io/{k}" for k in kinds} <= set(keys)
    assert {f"other/{i}" for i in range(5)} <= set(keys)
    assert SPOT["key"] in keys
    assert set(state.notices) == {f"E-{k}" for k in kinds}
    conflicts = [r for r in emulator.requests.since(0) if r.verb == "patch" and r.status == 409]
    assert conflicts, "the race did not happen; the test proved nothing"


async def test_a_scripted_conflict_is_retried(
    emulator: ClusterEmulator, kube_client: KubeClient
) -> None:
    emulator.seed(node_object())
    emulator.faults.add(
        {"match": {"verb": "patch", "resource": "nodes"}, "status": 409, "times": 2}
    )
    state = await actions(kube_client).begin(event_id="E1", kind="preempt", deadline=DEADLINE)
    assert state.unschedulable
    patches = [r.status for r in emulator.requests.since(0) if r.verb == "patch"]
    assert patches == [409, 409, 200]


async def test_dry_run_sends_no_writes(emulator: ClusterEmulator, kube_client: KubeClient) -> None:
    emulator.seed(node_object())
    mark = emulator.requests.next_seq
    node = actions(kube_client, dry_run=True)
    wanted = await node.begin(event_id="E1", kind="preempt", deadline=DEADLINE)
    assert wanted.unschedulable  # what would have been written
    await node.finish("E1")
    recorder = EventRecorder(
        kube=kube_client,
        node=NODE,
        node_uid="u",
        clock=FixedClock(),
        dry_run=True,
        log=structlog.get_logger(),
    )
    assert await recorder.record(reason=Reason.NOTICE, event_id="E1", message="m")
    assert writes(emulator, mark) == []
    assert not (await actions(kube_client).read()).unschedulable


async def test_unreadable_annotation_counts_as_empty(
    emulator: ClusterEmulator, kube_client: KubeClient
) -> None:
    obj = node_object()
    obj["metadata"]["annotations"] = {NOTICES_ANNOTATION: "{not json"}
    emulator.seed(obj)
    state = await actions(kube_client).begin(event_id="E1", kind="preempt", deadline=DEADLINE)
    assert set(state.notices) == {"E1"}


async def test_one_event_per_node_event_id_and_reason(
    emulator: ClusterEmulator, kube_client: KubeClient
) -> None:
    emulator.seed(node_object())
    recorder = EventRecorder(
        kube=kube_client,
        node=NODE,
        node_uid="uid-1",
        clock=FixedClock(),
        dry_run=False,
        log=structlog.get_logger(),
    )
    for _ in range(3):  # retries, a restarted agent...
        assert await recorder.record(reason=Reason.NOTICE, event_id="E1", message="Preempt")
    assert await recorder.record(reason=Reason.CORDONED, event_id="E1", message="cordoned")
    events = (await kube_client.request("GET", "/api/v1/namespaces/default/events"))["items"]
    assert sorted(e["reason"] for e in events) == ["SpotguardCordoned", "SpotguardNotice"]
    notice = next(e for e in events if e["reason"] == "SpotguardNotice")
    assert notice["metadata"]["name"] == event_name(NODE, "E1", Reason.NOTICE)
    assert notice["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Node",
        "name": NODE,
        "uid": "uid-1",
    }
    assert notice["type"] == "Warning"
    assert notice["source"] == {"component": "spotguard", "host": NODE}
    creates = [
        r.status
        for r in emulator.requests.since(0)
        if r.resource == "events" and r.verb == "create"
    ]
    assert creates == [201, 409, 409, 201]


def test_event_names_are_valid_and_distinct() -> None:
    long_node = "n" * 253
    name = event_name(long_node, "E1", Reason.NOTICE)
    assert len(name) <= 253
    assert name == name.lower()
    assert event_name(NODE, "E1", Reason.NOTICE) != event_name(NODE, "E2", Reason.NOTICE)
    assert event_name(NODE, "E1", Reason.NOTICE) != event_name(NODE, "E1", Reason.DRAINED)
