"""Queue mode's fleet count from two sources, end to end in one process: the agents' notices on
queue mode's own subscription and Event Grid's events on its queue, through the local Service Bus
broker (real SDK on both sides) and the emulated API server. Each eviction counts once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import structlog
from kubernetes_asyncio import client as k8s

from spotguard.model import Kind, Notice, Source, Status
from spotguard.queue.consumer import NoticeConsumer
from spotguard.queue.fleet import LEDGER_KEY, LEDGER_NAME, Entry, parse_ledger
from spotguard.queue.notices import NoticeCounter
from spotguard.sim.cluster import ClusterEmulator
from spotguard.sim.servicebus import ServiceBusBroker
from spotguard.sinks.cloudevents import (
    CONTENT_TYPE,
    CloudEvent,
    Origin,
    Phase,
    notice_event,
    outcome_event,
)
from spotguard.sinks.servicebus import ConnectionStringAuth
from tests import notices
from tests.cluster_fixtures import wait_for
from tests.integration.test_queue_consumer import (
    EVENT,
    NAMESPACE,
    NODE,
    OUT_OF_SERVICE,
    QUEUE,
    Replica,
    inject,
    taints_of,
)
from tests.integration.test_queue_recovery import DOWN_AT, SIBLING, Clock, node

TOPIC = "notices"
SUBSCRIPTION = f"{TOPIC}/queue-mode"
RECEIVED = f"{TOPIC}/subscriptions/queue-mode"
VM = "aks-spot-12345678-vmss_3"
ORIGIN = Origin(cluster="aks-ml", node=NODE, nodepool="spot")
#: The IMDS event's NotBefore: the eviction, about a second before Azure's occurredTime.
NOT_BEFORE = EVENT.occurred_at.replace(microsecond=0)


def preempt_notice(**changes: Any) -> Notice:
    """The Preempt notice the node's agent saw 30 s before its VM was evicted."""
    return replace(notices.preempt_notice(node=NODE, vm=VM, not_before=NOT_BEFORE), **changes)


def cloud_event(notice: Notice | None = None, origin: Origin = ORIGIN) -> CloudEvent:
    notice = notice or preempt_notice()
    return notice_event(notice, origin, notice.first_seen)


def publish(broker: ServiceBusBroker, event: CloudEvent, **properties: str) -> None:
    """As the agent's publisher sends it (message_id = the CloudEvent id)."""
    broker.inject(
        TOPIC,
        event.body(),
        message_id=event.id,
        content_type=CONTENT_TYPE,
        application_properties={**event.properties, **properties},
    )


@pytest.fixture
def broker() -> Iterator[ServiceBusBroker]:
    with ServiceBusBroker(
        queues=[QUEUE], topics={TOPIC: ["queue-mode", "audit"]}, lock_duration=5
    ) as sb:
        yield sb


class NoticeReplica(Replica):
    """A queue-mode replica that also reads its subscription of the notices topic."""

    def __init__(
        self, name: str, emulator: ClusterEmulator, broker: ServiceBusBroker, clock: Clock
    ) -> None:
        super().__init__(name, emulator, broker, clock)
        log = structlog.get_logger().bind(replica=name)
        self.notices = NoticeConsumer(
            auth=ConnectionStringAuth(broker.connection_string),
            subscription=SUBSCRIPTION,
            counter=NoticeCounter(fleet=self.fleet, kube=self.kube, log=log),
            leader=self.leader,
            metrics=self.metrics,
            log=log,
        )

    def start(self) -> None:
        super().start()
        self.tasks.append(asyncio.create_task(self.notices.run()))

    def evictions(self, nodepool: str = "spot") -> float:
        value = self.metrics.registry.get_sample_value(
            "spotguard_fleet_evictions_total", {"cluster": "aks-ml", "nodepool": nodepool}
        )
        return value or 0.0


@asynccontextmanager
async def replicas(
    emulator: ClusterEmulator, broker: ServiceBusBroker, clock: Clock, *names: str
) -> AsyncIterator[list[NoticeReplica]]:
    made = [NoticeReplica(n, emulator, broker, clock) for n in names]
    try:
        yield made
    finally:
        for replica in made:
            await replica.close()


def seed(emulator: ClusterEmulator, *nodes: dict[str, Any]) -> None:
    emulator.seed(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        *nodes,
    )


async def ledger(emulator: ClusterEmulator) -> tuple[Entry, ...]:
    async with k8s.ApiClient(k8s.Configuration(host=emulator.url)) as api:
        try:
            obj = await k8s.CoreV1Api(api).read_namespaced_config_map(LEDGER_NAME, NAMESPACE)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return ()
            raise
    return parse_ledger((obj.data or {}).get(LEDGER_KEY))


def ledger_writes(emulator: ClusterEmulator) -> list[Any]:
    return [
        r
        for r in emulator.requests.since(0)
        if r.resource == "configmaps" and r.verb in ("create", "update", "patch")
    ]


def dead_letter_reasons(broker: ServiceBusBroker, entity: str) -> list[tuple[str, str]]:
    out = []
    for dead in broker.dead_letters(entity):
        props = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in (dead.message.application_properties or {}).items()
        }
        out.append((props["DeadLetterReason"], props["DeadLetterErrorDescription"]))
    return out


CLOCK_AT = DOWN_AT + timedelta(seconds=90)  # the node has been NotReady for 90 s


async def test_a_notice_then_event_grid_for_the_same_vm_counts_once(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    seed(emulator, node(NODE, ready=False, since=DOWN_AT))
    async with replicas(emulator, broker, Clock(CLOCK_AT), "queue-a") as (replica,):
        replica.start()
        publish(broker, cloud_event())
        await wait_for(lambda: replica.evictions() == 1, timeout=15)
        await wait_for(lambda: replica.settled("completed") == 1, timeout=5)

        inject(broker)  # Azure's VirtualMachinePreempted for the same VM, a second later
        await wait_for(lambda: replica.settled("completed") == 2, timeout=15)
        assert OUT_OF_SERVICE in await taints_of(emulator)  # recovery still happens
        assert replica.evictions() == 1
    (counted,) = await ledger(emulator)
    assert (counted.vm, counted.source, counted.id, counted.node, counted.nodepool) == (
        VM,
        "notice",
        cloud_event().id,
        NODE,
        "spot",
    )
    assert counted.evicted == NOT_BEFORE
    assert broker.messages(RECEIVED) == []
    assert len(broker.messages(f"{TOPIC}/subscriptions/audit")) == 1  # others' copy untouched


async def test_event_grid_then_a_notice_for_the_same_vm_counts_once(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    seed(emulator, node(NODE, ready=False, since=DOWN_AT))
    async with replicas(emulator, broker, Clock(CLOCK_AT), "queue-a") as (replica,):
        replica.start()
        inject(broker)
        await wait_for(lambda: replica.settled("completed") == 1, timeout=15)
        assert replica.evictions() == 1

        publish(broker, cloud_event())  # a notice that arrives late (the agent retried)
        await wait_for(lambda: replica.settled("completed") == 2, timeout=15)
        assert replica.evictions() == 1
    (counted,) = await ledger(emulator)
    assert (counted.source, counted.id, counted.evicted) == (
        "eventgrid",
        EVENT.event_id,
        EVENT.occurred_at,
    )


async def test_a_notice_redelivered_after_its_count_was_written_counts_once(
    emulator: ClusterEmulator,
) -> None:
    """A real redelivery: the ledger write is held past the message lock, so the count is
    recorded but the message cannot be completed; it comes back and finds its claim."""
    seed(emulator, node(NODE, ready=False, since=DOWN_AT))
    held = emulator.faults.add(
        {"match": {"resource": "configmaps", "verb": "create"}, "delay": 2.5, "times": 1}
    )
    with ServiceBusBroker(topics={TOPIC: ["queue-mode"]}, queues=[QUEUE], lock_duration=1) as sb:
        async with replicas(emulator, sb, Clock(CLOCK_AT), "queue-a") as (replica,):
            replica.start()
            publish(sb, cloud_event())
            await wait_for(lambda: held.hits == 1, timeout=15)
            await wait_for(lambda: replica.settled("completed") == 1, timeout=20)
            assert replica.evictions() == 1
            # and the same notice sent again (a publisher retry without duplicate detection)
            publish(sb, cloud_event())
            await wait_for(lambda: replica.settled("completed") == 2, timeout=15)
            assert replica.evictions() == 1
        assert sb.messages(RECEIVED) == []
    gets = [
        r
        for r in emulator.requests.since(0)
        if r.resource == "configmaps" and r.verb == "get" and r.name == LEDGER_NAME
    ]
    assert len(gets) >= 3  # first delivery, redelivery, the second copy
    assert [w.status for w in ledger_writes(emulator)] == [201]
    assert len(await ledger(emulator)) == 1


async def test_other_notices_and_outcomes_are_completed_without_counting(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    seed(emulator, node(NODE, ready=False, since=DOWN_AT))
    others = [
        cloud_event(preempt_notice(kind=Kind.REBOOT)),
        cloud_event(preempt_notice(source=Source.DRILL)),
        cloud_event(preempt_notice(status=Status.CANCELLED)),
        outcome_event(preempt_notice(), ORIGIN, CLOCK_AT, Phase.DRAINED, result="drained"),
        cloud_event(origin=replace(ORIGIN, cluster="aks-other")),  # a shared topic
    ]
    async with replicas(emulator, broker, Clock(CLOCK_AT), "queue-a") as (replica,):
        replica.start()
        for event in others:
            publish(broker, event)
        await wait_for(lambda: replica.settled("completed") == len(others), timeout=15)
        assert replica.evictions() == 0
    assert broker.messages(RECEIVED) == []
    assert broker.dead_letters(RECEIVED) == []
    assert ledger_writes(emulator) == []


async def test_malformed_notices_are_dead_lettered_with_the_reason(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    seed(emulator, node(NODE, ready=False, since=DOWN_AT))
    good = json.loads(cloud_event().body())
    no_vm = {**good, "data": {k: v for k, v in good["data"].items() if k != "vm_name"}}
    async with replicas(emulator, broker, Clock(CLOCK_AT), "queue-a") as (replica,):
        replica.start()
        broker.inject(TOPIC, b"<html>502 Bad Gateway</html>", content_type="text/html")
        broker.inject(TOPIC, no_vm, content_type=CONTENT_TYPE)
        broker.inject(TOPIC, [good, good], content_type=CONTENT_TYPE)
        await wait_for(lambda: replica.settled("dead_lettered") == 3, timeout=15)
        assert replica.evictions() == 0
        # still consuming: a good one after them counts
        publish(broker, cloud_event())
        await wait_for(lambda: replica.evictions() == 1, timeout=15)
    reasons = dead_letter_reasons(broker, RECEIVED)
    assert [r for r, _ in reasons] == ["InvalidNotice"] * 3
    assert "text/html" in reasons[0][1]
    assert "vm_name is missing" in reasons[1][1]
    assert "JSON array" in reasons[2][1]


async def test_with_the_node_gone_each_eviction_still_counts_once(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    """AKS's default Delete policy: the node is deleted soon after its VM. The notice and both
    deliveries of Event Grid's event find it gone; the ledger, not the node, remembers."""
    seed(emulator, node(SIBLING, ready=True, since=DOWN_AT - timedelta(days=1)))
    async with replicas(emulator, broker, Clock(CLOCK_AT), "queue-a") as (replica,):
        replica.start()
        publish(broker, cloud_event())
        await wait_for(lambda: replica.evictions() == 1, timeout=15)
        inject(broker)
        inject(broker)  # redelivered
        await wait_for(lambda: replica.settled("completed") == 3, timeout=15)
        assert replica.evictions() == 1
        # A second VM of the pool, reported by Event Grid only (its agent never published):
        other = json.loads(json.dumps(EVENT_GRID_VM4))
        inject(broker, other)
        inject(broker, other)
        await wait_for(lambda: replica.settled("completed") == 5, timeout=15)
        assert replica.evictions() == 2
    assert [(e.vm, e.source) for e in await ledger(emulator)] == [
        (VM, "notice"),
        ("aks-spot-12345678-vmss_4", "eventgrid"),
    ]


async def test_a_notice_without_a_nodepool_counts_against_its_nodes_pool(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    seed(emulator, node(NODE, ready=False, since=DOWN_AT))
    async with replicas(emulator, broker, Clock(CLOCK_AT), "queue-a") as (replica,):
        replica.start()
        publish(broker, cloud_event(origin=replace(ORIGIN, nodepool="")))
        await wait_for(lambda: replica.evictions("spot") == 1, timeout=15)
        assert replica.evictions("unknown") == 0


async def test_failover_the_standby_finds_the_count_and_does_not_count_again(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    seed(emulator, node(NODE, ready=False, since=DOWN_AT))
    async with replicas(emulator, broker, Clock(CLOCK_AT), "queue-a", "queue-b") as (a, b):
        a.start()
        await wait_for(a.leader.is_leader.is_set, timeout=5)
        b.start()
        publish(broker, cloud_event())
        await wait_for(lambda: a.evictions() == 1, timeout=15)
        assert b.settled("completed") == 0  # a standby takes nothing

        await a.stop()
        await wait_for(b.leader.is_leader.is_set, timeout=10)
        publish(broker, cloud_event())  # as after a failover mid-settlement
        inject(broker)
        await wait_for(lambda: b.settled("completed") == 2, timeout=15)
        assert a.evictions() + b.evictions() == 1
    assert len(await ledger(emulator)) == 1


def _vm4_event() -> Any:
    from tests.integration.test_queue_consumer import PREEMPTED

    doc = json.loads(json.dumps(PREEMPTED))
    event = doc[0]
    event["id"] = "6c1f3d9e-8b7e-4d2f-a04c-3e9b7f5d2a81"
    for key in ("subject",):
        event[key] = event[key].replace("virtualMachines/3", "virtualMachines/4")
    props = event["data"]["resourceInfo"]["properties"]
    props["targetResourceId"] = props["targetResourceId"].replace(
        "virtualMachines/3", "virtualMachines/4"
    )
    return doc


EVENT_GRID_VM4 = _vm4_event()
