"""Queue mode's recovery against the emulated API server, through spotguard's own client."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from kubernetes_asyncio import client as k8s
from prometheus_client import CollectorRegistry

from spotguard.config import parse_taint
from spotguard.kube.client import MERGE_PATCH, SMP, KubeClient
from spotguard.observability.metrics import Metrics
from spotguard.queue.events import FleetEvent, parse_message
from spotguard.queue.fleet import FleetCounter
from spotguard.queue.recovery import (
    RECOVERY_ANNOTATION,
    Outcome,
    RecoveryHandler,
    Step,
    recovery_record,
)
from spotguard.sim.cluster import ClusterEmulator
from spotguard.sim.cluster_scenarios import node_object
from spotguard.sources.identity import parse_vm_resource_id
from tests.cluster_fixtures import wait_for

DATA = Path(__file__).parents[1] / "data" / "eventgrid"
#: instance 3 of aks-spot-12345678-vmss; the event names the node resource group in upper case,
#: the emulated nodes' providerIDs in lower case
EVENT = parse_message((DATA / "aks-spot-preempted-eventgrid.json").read_bytes())
NODE = "aks-spot-12345678-vmss000003"
SIBLING = "aks-spot-12345678-vmss000001"
SYSTEM = "aks-system-23456789-vmss000000"
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
DOWN_AT = EVENT.occurred_at.replace(microsecond=0) + timedelta(seconds=40)  # marked NotReady


class Clock:
    def __init__(self, now: datetime) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at


def node(name: str, pool: str = "spot", *, ready: bool, since: datetime) -> dict[str, Any]:
    index = int(name[-6:])
    obj = node_object(name, pool, index, spot=pool == "spot", ip=f"10.224.0.{index + 4}")
    for condition in obj["status"]["conditions"]:
        if condition["type"] == "Ready":
            condition["status"] = "True" if ready else "Unknown"
            condition["reason"] = "KubeletReady" if ready else "NodeStatusUnknown"
            condition["lastTransitionTime"] = since.strftime("%Y-%m-%dT%H:%M:%SZ")
    return obj


NAMESPACE = "spotguard"  # queue mode's: the fleet ledger lives there


@pytest.fixture
async def kube_client(emulator: ClusterEmulator) -> AsyncIterator[KubeClient]:
    emulator.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    kube = KubeClient(k8s.ApiClient(k8s.Configuration(host=emulator.url)), timeout=5)
    yield kube
    await kube.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(DOWN_AT + timedelta(seconds=90))


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def handler(
    kube: KubeClient, clock: Clock, metrics: Metrics, *, dry_run: bool = False, page_size: int = 500
) -> RecoveryHandler:
    log = structlog.get_logger()
    return RecoveryHandler(
        kube=kube,
        clock=clock,
        metrics=metrics,
        log=log,
        cluster="aks-ml",
        fleet=fleet_counter(kube, clock, metrics, dry_run=dry_run),
        not_ready_after=60,
        taint=parse_taint("node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"),
        dry_run=dry_run,
        page_size=page_size,
    )


def fleet_counter(
    kube: KubeClient, clock: Clock, metrics: Metrics, *, dry_run: bool = False
) -> FleetCounter:
    return FleetCounter(
        kube=kube,
        namespace=NAMESPACE,
        cluster="aks-ml",
        clock=clock,
        metrics=metrics,
        log=structlog.get_logger(),
        dry_run=dry_run,
    )


def last_seq(emulator: ClusterEmulator) -> int:
    """The request log's position: ``since(last_seq(...))`` is every request from now on."""
    return emulator.requests.next_seq - 1


def writes(emulator: ClusterEmulator, since: int = 0) -> list[Any]:
    return [
        r
        for r in emulator.requests.since(since)
        if r.verb in ("patch", "update", "create") and r.resource == "nodes"
    ]


async def read(kube: KubeClient, name: str = NODE) -> dict[str, Any]:
    return await kube.request("GET", f"/api/v1/nodes/{name}")


def taints(obj: dict[str, Any]) -> list[str]:
    return sorted(f"{t['key']}:{t['effect']}" for t in obj["spec"].get("taints") or ())


def count(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_a_node_down_long_enough_is_tainted_once_and_a_redelivery_changes_nothing(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(
        node(NODE, ready=False, since=DOWN_AT),
        node(SIBLING, ready=True, since=DOWN_AT - timedelta(days=1)),
        node(SYSTEM, "system", ready=True, since=DOWN_AT - timedelta(days=1)),
    )
    mark = last_seq(emulator)
    recovery = handler(kube_client, clock, metrics)

    result = await recovery.handle(EVENT)

    assert (result.outcome, result.node, result.nodepool) == (Outcome.TAINTED, NODE, "spot")
    (patch,) = writes(emulator, mark)
    assert (patch.verb, patch.name, patch.content_type, patch.status) == ("patch", NODE, SMP, 200)
    obj = await read(kube_client)
    assert taints(obj) == [
        "kubernetes.azure.com/scalesetpriority:NoSchedule",
        f"{OUT_OF_SERVICE}:NoExecute",
    ]
    added = next(t for t in obj["spec"]["taints"] if t["key"] == OUT_OF_SERVICE)
    assert added["value"] == "nodeshutdown"
    record = recovery_record(obj)
    assert record.taint_ours
    (entry,) = record.history
    assert (entry.event_id, entry.vm, entry.annotation, entry.action) == (
        EVENT.event_id,
        "aks-spot-12345678-vmss_3",
        "VirtualMachinePreempted",
        Step.TAINTED,
    )
    assert entry.at == "2026-11-28T14:02:41.000Z"  # the injected clock's time
    for other in (SIBLING, SYSTEM):
        untouched = await read(kube_client, other)
        assert RECOVERY_ANNOTATION not in (untouched["metadata"].get("annotations") or {})

    # The same message again (redelivered, or another replica had it): nothing is written.
    mark = last_seq(emulator)
    clock.at += timedelta(minutes=5)
    again = await recovery.handle(EVENT)
    assert again.outcome is Outcome.ALREADY_DONE
    assert writes(emulator, mark) == []
    assert recovery_record(await read(kube_client)) == record

    assert count(metrics, "spotguard_fleet_evictions_total", cluster="aks-ml", nodepool="spot") == 1
    assert count(metrics, "spotguard_queue_recoveries_total", outcome="tainted") == 1
    assert count(metrics, "spotguard_queue_recoveries_total", outcome="already_done") == 1


async def test_a_node_still_ready_is_not_tainted_and_the_event_comes_back_later(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(node(NODE, ready=True, since=EVENT.occurred_at - timedelta(days=2)))
    mark = last_seq(emulator)

    result = await handler(kube_client, clock, metrics).handle(EVENT)

    assert result.outcome is Outcome.NOT_READY_YET
    assert not result.outcome.final
    assert result.retry_after == 60
    assert writes(emulator, mark) == []
    assert taints(await read(kube_client)) == ["kubernetes.azure.com/scalesetpriority:NoSchedule"]
    assert count(metrics, "spotguard_fleet_evictions_total", cluster="aks-ml", nodepool="spot") in (
        None,
        0,
    )


async def test_a_node_not_down_long_enough_waits_for_the_rest_of_the_time(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(node(NODE, ready=False, since=DOWN_AT))
    clock.at = DOWN_AT + timedelta(seconds=20)
    recovery = handler(kube_client, clock, metrics)

    waiting = await recovery.handle(EVENT)
    assert (waiting.outcome, waiting.retry_after) == (Outcome.NOT_READY_YET, 40)

    clock.at = DOWN_AT + timedelta(seconds=61)
    assert (await recovery.handle(EVENT)).outcome is Outcome.TAINTED


async def test_a_node_ready_again_since_the_event_is_recorded_and_not_tainted(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(node(NODE, ready=True, since=EVENT.occurred_at + timedelta(minutes=2)))
    recovery = handler(kube_client, clock, metrics)

    result = await recovery.handle(EVENT)
    assert result.outcome is Outcome.RECOVERED
    obj = await read(kube_client)
    assert f"{OUT_OF_SERVICE}:NoExecute" not in taints(obj)
    assert [e.action for e in recovery_record(obj).history] == [Step.NODE_READY]
    assert (await recovery.handle(EVENT)).outcome is Outcome.ALREADY_DONE
    assert count(metrics, "spotguard_fleet_evictions_total", cluster="aks-ml", nodepool="spot") == 1


async def test_a_gone_node_needs_nothing_and_counts_against_its_scale_sets_pool(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(node(SIBLING, ready=True, since=DOWN_AT - timedelta(days=1)))
    mark = last_seq(emulator)

    result = await handler(kube_client, clock, metrics).handle(EVENT)

    assert (result.outcome, result.node, result.nodepool) == (Outcome.NODE_MISSING, None, "spot")
    assert result.outcome.final
    assert writes(emulator, mark) == []
    assert count(metrics, "spotguard_fleet_evictions_total", cluster="aks-ml", nodepool="spot") == 1


async def test_a_gone_node_of_a_gone_pool_counts_as_unknown(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(node(SYSTEM, "system", ready=True, since=DOWN_AT - timedelta(days=1)))
    result = await handler(kube_client, clock, metrics).handle(EVENT)
    assert (result.outcome, result.nodepool) == (Outcome.NODE_MISSING, "unknown")
    assert (
        count(metrics, "spotguard_fleet_evictions_total", cluster="aks-ml", nodepool="unknown") == 1
    )


async def test_a_vm_of_another_cluster_is_not_counted(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(node(SIBLING, ready=True, since=DOWN_AT - timedelta(days=1)))
    vm = parse_vm_resource_id(EVENT.resource_id)
    elsewhere = replace(vm, resource_group="MC_rg-other_aks-other_westeurope")
    event = replace(EVENT, vm=elsewhere, resource_id=elsewhere.resource_id)

    result = await handler(kube_client, clock, metrics).handle(event)

    assert result.outcome is Outcome.NOT_IN_CLUSTER
    assert count(metrics, "spotguard_queue_recoveries_total", outcome="not_in_cluster") == 1
    assert count(metrics, "spotguard_fleet_evictions_total", cluster="aks-ml", nodepool="spot") in (
        None,
        0,
    )


async def test_provider_ids_match_ignoring_case(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    shouting = node(NODE, ready=False, since=DOWN_AT)
    shouting["spec"]["providerID"] = (
        shouting["spec"]["providerID"].upper().replace("AZURE:", "azure:")
    )
    emulator.seed(shouting)
    lower = EVENT.resource_id.lower()
    event = replace(EVENT, resource_id=lower, vm=parse_vm_resource_id(lower))
    assert event.vm != EVENT.vm

    assert (await handler(kube_client, clock, metrics).handle(event)).outcome is Outcome.TAINTED
    assert f"{OUT_OF_SERVICE}:NoExecute" in taints(await read(kube_client))


async def test_the_taint_comes_off_when_the_node_is_ready_again_and_the_history_stays(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(
        node(NODE, ready=False, since=DOWN_AT),
        node(SIBLING, ready=True, since=DOWN_AT - timedelta(days=1)),
    )
    recovery = handler(kube_client, clock, metrics)
    assert (await recovery.handle(EVENT)).outcome is Outcome.TAINTED
    assert await recovery.reconcile() == []  # still down: nothing to do

    # The Deallocate-policy VM comes back: the kubelet reports Ready.
    clock.at += timedelta(minutes=20)
    back = clock.at.strftime("%Y-%m-%dT%H:%M:%SZ")
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "lastTransitionTime": back,
    }
    await kube_client.request(
        "PATCH",
        f"/api/v1/nodes/{NODE}/status",
        body={"status": {"conditions": [ready]}},
        content_type=SMP,
    )
    mark = last_seq(emulator)

    (result,) = await recovery.reconcile()

    assert (result.outcome, result.node, result.event_id) == (
        Outcome.UNTAINTED,
        NODE,
        EVENT.event_id,
    )
    (patch,) = writes(emulator, mark)
    assert patch.name == NODE
    obj = await read(kube_client)
    assert taints(obj) == ["kubernetes.azure.com/scalesetpriority:NoSchedule"]
    record = recovery_record(obj)
    assert not record.taint_ours
    assert [e.action for e in record.history] == [Step.TAINTED, Step.UNTAINTED]
    # Done: neither reconcile nor a redelivered event puts it back or takes anything off.
    mark = last_seq(emulator)
    assert await recovery.reconcile() == []
    assert (await recovery.handle(EVENT)).outcome is Outcome.ALREADY_DONE
    assert writes(emulator, mark) == []
    assert count(metrics, "spotguard_queue_recoveries_total", outcome="untainted") == 1


async def test_a_taint_that_was_not_ours_is_never_removed(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    theirs = node(NODE, ready=False, since=DOWN_AT)
    theirs["spec"]["taints"].append(
        {"key": OUT_OF_SERVICE, "value": "shutdown", "effect": "NoExecute"}
    )
    emulator.seed(theirs)
    recovery = handler(kube_client, clock, metrics)
    assert (await recovery.handle(EVENT)).outcome is Outcome.TAINTED
    obj = await read(kube_client)
    assert not recovery_record(obj).taint_ours
    assert [e.action for e in recovery_record(obj).history] == [Step.ALREADY_TAINTED]

    back = (clock.at + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await kube_client.request(
        "PATCH",
        f"/api/v1/nodes/{NODE}/status",
        body={
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": back}]
            }
        },
        content_type=SMP,
    )
    assert await recovery.reconcile() == []
    assert f"{OUT_OF_SERVICE}:NoExecute" in taints(await read(kube_client))


async def test_a_scripted_conflict_is_retried(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(node(NODE, ready=False, since=DOWN_AT))
    emulator.faults.add(
        {"match": {"verb": "patch", "resource": "nodes"}, "status": 409, "times": 2}
    )
    mark = last_seq(emulator)

    assert (await handler(kube_client, clock, metrics).handle(EVENT)).outcome is Outcome.TAINTED

    assert [w.status for w in writes(emulator, mark)] == [409, 409, 200]
    assert f"{OUT_OF_SERVICE}:NoExecute" in taints(await read(kube_client))


async def test_a_real_conflict_loses_no_one_elses_taint(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    """Another actor taints the node between our read and our write: our write is refused
    (stale resourceVersion), redone against the fresh node, and both taints are kept."""
    emulator.seed(node(NODE, ready=False, since=DOWN_AT))
    held = emulator.faults.add(
        {"match": {"verb": "patch", "resource": "nodes"}, "delay": 0.3, "times": 1}
    )
    mark = last_seq(emulator)
    task = asyncio.create_task(handler(kube_client, clock, metrics).handle(EVENT))
    await wait_for(lambda: held.hits == 1)  # our patch is in, held with the old resourceVersion
    remediator = {"key": "remediator.kubernetes.azure.com/unschedulable", "effect": "NoSchedule"}
    current = await read(kube_client)
    await kube_client.request(
        "PATCH",
        f"/api/v1/nodes/{NODE}",
        body={"spec": {"taints": [*current["spec"]["taints"], remediator]}},
        content_type=MERGE_PATCH,
    )

    result = await task

    assert result.outcome is Outcome.TAINTED
    # by the order they came in: ours (held, then refused), theirs, ours again
    assert [w.status for w in writes(emulator, mark)] == [409, 200, 200]
    assert taints(await read(kube_client)) == [
        "kubernetes.azure.com/scalesetpriority:NoSchedule",
        f"{OUT_OF_SERVICE}:NoExecute",
        "remediator.kubernetes.azure.com/unschedulable:NoSchedule",
    ]


async def test_a_node_deleted_before_the_write_is_missing(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(node(NODE, ready=False, since=DOWN_AT))
    held = emulator.faults.add(
        {"match": {"verb": "patch", "resource": "nodes"}, "delay": 0.3, "times": 1}
    )
    task = asyncio.create_task(handler(kube_client, clock, metrics).handle(EVENT))
    await wait_for(lambda: held.hits == 1)
    await kube_client.request("DELETE", f"/api/v1/nodes/{NODE}")
    assert (await task).outcome is Outcome.NODE_MISSING


async def test_dry_run_writes_nothing(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(node(NODE, ready=False, since=DOWN_AT))
    mark = last_seq(emulator)
    result = await handler(kube_client, clock, metrics, dry_run=True).handle(EVENT)
    assert result.outcome is Outcome.TAINTED
    assert writes(emulator, mark) == []


async def test_nodes_are_listed_page_by_page(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    since = DOWN_AT - timedelta(days=1)
    emulator.seed(
        *(node(f"aks-spot-12345678-vmss00000{i}", ready=True, since=since) for i in (0, 1, 2)),
        node(NODE, ready=False, since=DOWN_AT),
        node(SYSTEM, "system", ready=True, since=since),
    )
    mark = last_seq(emulator)
    result = await handler(kube_client, clock, metrics, page_size=2).handle(EVENT)
    assert result.outcome is Outcome.TAINTED
    lists = [r for r in emulator.requests.since(mark) if r.verb == "list"]
    assert len(lists) == 3


async def test_an_irrelevant_event_touches_nothing(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(node(NODE, ready=False, since=DOWN_AT))
    ignored: FleetEvent = parse_message((DATA / "aks-live-migration-eventgrid.json").read_bytes())
    mark = last_seq(emulator)
    assert (await handler(kube_client, clock, metrics).handle(ignored)).outcome is Outcome.IGNORED
    assert emulator.requests.since(mark) == []


def test_seeded_nodes_look_like_aks_nodes() -> None:
    obj = node(NODE, ready=False, since=DOWN_AT)
    assert obj["spec"]["providerID"].startswith("azure:///subscriptions/")
    assert "/resourceGroups/mc_rg-ml_aks-ml_westeurope/" in obj["spec"]["providerID"]
    assert obj["spec"]["providerID"].endswith(
        "/virtualMachineScaleSets/aks-spot-12345678-vmss/virtualMachines/3"
    )
    assert copy.deepcopy(obj) == obj
    assert datetime.fromisoformat(
        next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")["lastTransitionTime"]
    ) == DOWN_AT.astimezone(UTC)


async def test_fleet_evictions_start_at_zero_for_the_pools_there_are(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    since = DOWN_AT - timedelta(days=1)
    emulator.seed(
        node(SIBLING, ready=True, since=since), node(SYSTEM, "system", ready=True, since=since)
    )
    assert await handler(kube_client, clock, metrics).prime_metrics() == ["spot", "system"]
    for pool in ("spot", "system", "unknown"):
        assert (
            count(metrics, "spotguard_fleet_evictions_total", cluster="aks-ml", nodepool=pool) == 0
        )


async def test_the_reconciler_untaints_on_its_own_and_survives_api_errors(
    emulator: ClusterEmulator, kube_client: KubeClient, clock: Clock, metrics: Metrics
) -> None:
    emulator.seed(node(NODE, ready=False, since=DOWN_AT))
    recovery = handler(kube_client, clock, metrics)
    assert (await recovery.handle(EVENT)).outcome is Outcome.TAINTED
    emulator.faults.add({"match": {"verb": "list", "resource": "nodes"}, "status": 500, "times": 2})
    ready = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-28T15:00:00Z"}
    await kube_client.request(
        "PATCH",
        f"/api/v1/nodes/{NODE}/status",
        body={"status": {"conditions": [ready]}},
        content_type=SMP,
    )
    task = asyncio.create_task(recovery.run_reconciler(0.05))
    try:
        await wait_for(
            lambda: count(metrics, "spotguard_queue_recoveries_total", outcome="untainted")
        )
    finally:
        task.cancel()
    assert f"{OUT_OF_SERVICE}:NoExecute" not in taints(await read(kube_client))
    lists = [r.status for r in emulator.requests.since(0) if r.verb == "list"]
    assert lists[:4] == [200, 500, 500, 200]  # handle's; the reconciler's two failures, then on
