"""Queue mode end to end in one process: the local Service Bus broker (real SDK on both sides), the
emulated API server, Lease leader election, and the consumer settling each message."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from kubernetes_asyncio import client as k8s
from prometheus_client import CollectorRegistry

from spotguard.clock import SystemClock
from spotguard.config import parse_taint
from spotguard.kube.client import KubeClient
from spotguard.observability.metrics import Metrics
from spotguard.queue.consumer import QueueConsumer
from spotguard.queue.events import parse_message
from spotguard.queue.fleet import FleetCounter
from spotguard.queue.leader import LeaderElector
from spotguard.queue.recovery import RecoveryHandler, recovery_record
from spotguard.sim.cluster import ClusterEmulator
from spotguard.sim.servicebus import ServiceBusBroker
from spotguard.sinks.servicebus import ConnectionStringAuth
from tests.cluster_fixtures import wait_for
from tests.integration.test_queue_recovery import DOWN_AT, Clock, node

DATA = Path(__file__).parents[1] / "data" / "eventgrid"
PREEMPTED = json.loads((DATA / "aks-spot-preempted-eventgrid.json").read_text())
EVENT = parse_message(json.dumps(PREEMPTED).encode())
NODE = "aks-spot-12345678-vmss000003"
QUEUE = "vm-events"
NAMESPACE = "spotguard"
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"


@pytest.fixture
def broker() -> Iterator[ServiceBusBroker]:
    with ServiceBusBroker(queues=[QUEUE], lock_duration=5) as sb:
        yield sb


class Replica:
    """One queue-mode replica: its own API client, elector, handler and consumer."""

    def __init__(
        self,
        name: str,
        emulator: ClusterEmulator,
        broker: ServiceBusBroker,
        clock: Clock | SystemClock,
        max_age: timedelta = timedelta(hours=1),
    ) -> None:
        self.name = name
        self.metrics = Metrics(CollectorRegistry())
        self.kube = KubeClient(k8s.ApiClient(k8s.Configuration(host=emulator.url)), timeout=5)
        log = structlog.get_logger().bind(replica=name)
        self.leader = LeaderElector(
            kube=self.kube,
            namespace=NAMESPACE,
            identity=name,
            clock=clock,
            log=log,
            lease_duration=3.0,
            renew_deadline=2.0,
            retry_period=0.5,
            metrics=self.metrics,
        )
        self.fleet = FleetCounter(
            kube=self.kube,
            namespace=NAMESPACE,
            cluster="aks-ml",
            clock=clock,
            metrics=self.metrics,
            log=log,
            dry_run=False,
        )
        self.recovery = RecoveryHandler(
            kube=self.kube,
            clock=clock,
            metrics=self.metrics,
            log=log,
            cluster="aks-ml",
            fleet=self.fleet,
            not_ready_after=60,
            taint=parse_taint("node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"),
            dry_run=False,
        )
        self.consumer = QueueConsumer(
            auth=ConnectionStringAuth(broker.connection_string),
            queue=QUEUE,
            recovery=self.recovery,
            leader=self.leader,
            metrics=self.metrics,
            clock=clock,
            log=log,
            max_age=max_age,
        )
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self.leader.run()),
            asyncio.create_task(self.consumer.run()),
        ]

    async def stop(self) -> None:
        for task in reversed(self.tasks):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.tasks = []

    async def close(self) -> None:
        await self.stop()
        await self.kube.close()

    def settled(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "spotguard_queue_messages_total", {"outcome": outcome}
        )
        return value or 0.0


@asynccontextmanager
async def replicas(
    emulator: ClusterEmulator, broker: ServiceBusBroker, clock: Clock, *names: str
) -> AsyncIterator[list[Replica]]:
    made = [Replica(n, emulator, broker, clock) for n in names]
    try:
        yield made
    finally:
        for replica in made:
            await replica.close()


def seed(emulator: ClusterEmulator, *, ready: bool) -> None:
    """The node NotReady since 40 s after the event, or Ready since long before it."""
    since = DOWN_AT if not ready else EVENT.occurred_at - timedelta(hours=1)
    emulator.seed(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        node(NODE, ready=ready, since=since),
    )


async def taints_of(emulator: ClusterEmulator) -> list[str]:
    async with k8s.ApiClient(k8s.Configuration(host=emulator.url)) as api:
        obj = await k8s.CoreV1Api(api).read_node(NODE)
    return [t.key for t in obj.spec.taints or ()]


def node_writes(emulator: ClusterEmulator) -> list[Any]:
    return [r for r in emulator.requests.since(0) if r.verb == "patch" and r.resource == "nodes"]


def inject(broker: ServiceBusBroker, body: Any = None, **kwargs: Any) -> None:
    broker.inject(
        QUEUE,
        PREEMPTED if body is None else body,
        content_type="application/json",
        application_properties={"aeg-event-type": "Notification"},
        **kwargs,
    )


async def test_a_preempted_vm_gets_its_node_tainted_once_and_the_message_completed(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    seed(emulator, ready=False)
    clock = Clock(DOWN_AT + timedelta(seconds=90))
    async with replicas(emulator, broker, clock, "queue-a") as (replica,):
        replica.start()
        inject(broker)
        await wait_for(lambda: replica.settled("completed") == 1, timeout=15)
        assert OUT_OF_SERVICE in await taints_of(emulator)
        # The same event again (Event Grid delivers at least once): nothing is written twice.
        writes = len(node_writes(emulator))
        inject(broker)
        await wait_for(lambda: replica.settled("completed") == 2, timeout=15)
        assert len(node_writes(emulator)) == writes
    assert broker.messages(QUEUE) == []
    recovery = replica.metrics.registry.get_sample_value(
        "spotguard_fleet_evictions_total", {"cluster": "aks-ml", "nodepool": "spot"}
    )
    assert recovery == 1


async def test_malformed_messages_are_dead_lettered_with_the_reason(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    seed(emulator, ready=False)
    clock = Clock(DOWN_AT + timedelta(seconds=90))
    async with replicas(emulator, broker, clock, "queue-a") as (replica,):
        replica.start()
        inject(broker, {"not": "an event"})
        await wait_for(lambda: replica.settled("dead_lettered") == 1, timeout=15)
    (dead,) = broker.dead_letters(QUEUE)
    properties = {
        (k.decode() if isinstance(k, bytes) else k): v
        for k, v in (dead.message.application_properties or {}).items()
    }
    assert properties["DeadLetterReason"] == "InvalidEvent"
    assert properties["DeadLetterErrorDescription"]
    assert OUT_OF_SERVICE not in await taints_of(emulator)


async def test_api_server_errors_abandon_and_the_redelivery_is_handled(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    seed(emulator, ready=False)
    emulator.faults.add({"match": {"resource": "nodes", "verb": "list"}, "status": 503, "times": 1})
    clock = Clock(DOWN_AT + timedelta(seconds=90))
    async with replicas(emulator, broker, clock, "queue-a") as (replica,):
        replica.start()
        inject(broker)
        await wait_for(lambda: replica.settled("completed") == 1, timeout=20)
        assert replica.settled("abandoned") == 1
    assert OUT_OF_SERVICE in await taints_of(emulator)


async def test_a_node_still_ready_is_looked_at_again_later(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    """Scheduled delivery is wall-clock time at the broker: this replica runs on the real clock
    (the golden event is old, hence the age limit out of the way)."""
    seed(emulator, ready=True)
    replica = Replica("queue-a", emulator, broker, SystemClock(), max_age=timedelta(days=9999))
    try:
        replica.start()
        inject(broker)
        await wait_for(lambda: replica.settled("completed") == 1, timeout=15)
    finally:
        await replica.close()
    (later,) = broker.scheduled(QUEUE)
    assert later.message_id == broker_message_id(later)
    assert later.scheduled_enqueue_time is not None
    assert OUT_OF_SERVICE not in await taints_of(emulator)


def broker_message_id(message: Any) -> Any:
    return message.message.message_id


async def test_failover_the_standby_takes_over_and_redelivery_does_nothing_twice(
    emulator: ClusterEmulator, broker: ServiceBusBroker
) -> None:
    seed(emulator, ready=False)
    clock = Clock(DOWN_AT + timedelta(seconds=90))
    async with replicas(emulator, broker, clock, "queue-a", "queue-b") as (a, b):
        a.start()
        await wait_for(a.leader.is_leader.is_set, timeout=5)
        b.start()
        inject(broker)
        await wait_for(lambda: a.settled("completed") == 1, timeout=15)
        assert b.settled("completed") == 0  # a standby takes nothing
        writes = len(node_writes(emulator))

        await a.stop()  # the leader goes away (it releases its lease on the way out)
        await wait_for(b.leader.is_leader.is_set, timeout=10)
        # The same event again, as after a failover mid-settlement: done already on the node.
        inject(broker)
        await wait_for(lambda: b.settled("completed") == 1, timeout=15)
        assert len(node_writes(emulator)) == writes
    async with k8s.ApiClient(k8s.Configuration(host=emulator.url)) as api:
        obj = await k8s.CoreV1Api(api).read_node(NODE)
    record = recovery_record({"metadata": {"annotations": obj.metadata.annotations}})
    assert [entry.event_id for entry in record.history] == [EVENT.event_id]
