"""The agent's Service Bus publisher against the local broker, read back with the real SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from azure.identity.aio import WorkloadIdentityCredential
from azure.servicebus.aio import ServiceBusClient
from prometheus_client import CollectorRegistry

from spotguard.errors import ConfigError
from spotguard.model import Notice
from spotguard.observability.metrics import Metrics
from spotguard.sim.child_process import free_port
from spotguard.sim.servicebus import ServiceBusBroker
from spotguard.sinks.cloudevents import Origin, Phase, notice_event, outcome_event
from spotguard.sinks.servicebus import (
    ConnectionStringAuth,
    ServiceBusPublisher,
    WorkloadIdentityAuth,
    auth_from,
    make_client,
)
from tests.notices import preempt_notice

QUEUE = "spotguard-notices"
ORIGIN = Origin(cluster="aks-ml", node="aks-spot-12345678-vmss000003", nodepool="spot")
NOW = datetime(2026, 11, 28, 14, 0, 0, tzinfo=UTC)


def notice() -> Notice:
    return preempt_notice(
        node=ORIGIN.node,
        vm="aks-spot-12345678-vmss_3",
        not_before=NOW + timedelta(seconds=30),
        event_id="A123BC45-0000-4000-8000-000000000001",
    )


@pytest.fixture
def broker() -> Iterator[ServiceBusBroker]:
    with ServiceBusBroker(queues=[QUEUE]) as sb:
        yield sb


def text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def metric(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "spotguard_actions_total", {"action": "publish", "outcome": outcome}
    )
    return value or 0.0


@asynccontextmanager
async def running(publisher: ServiceBusPublisher) -> AsyncIterator[ServiceBusPublisher]:
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def publisher(conn: str, metrics: Metrics, **kwargs: Any) -> ServiceBusPublisher:
    return ServiceBusPublisher(
        auth=ConnectionStringAuth(conn),
        entity=QUEUE,
        metrics=metrics,
        log=structlog.get_logger(),
        **kwargs,
    )


async def receive_all(conn: str, count: int) -> list[Any]:
    async with (
        ServiceBusClient.from_connection_string(conn) as client,
        client.get_queue_receiver(QUEUE, max_wait_time=1) as receiver,
    ):
        got: list[Any] = []
        while len(got) < count:
            batch = await receiver.receive_messages(max_message_count=count, max_wait_time=2)
            if not batch:
                break
            for message in batch:
                await receiver.complete_message(message)
            got += batch
        return got


async def test_notice_and_outcome_arrive_as_cloudevents(broker: ServiceBusBroker) -> None:
    metrics = Metrics(CollectorRegistry())
    async with running(publisher(broker.connection_string, metrics)) as pub:
        pub.publish(notice_event(notice(), ORIGIN, NOW))
        pub.publish(outcome_event(notice(), ORIGIN, NOW, Phase.DRAINED, result="drained"))
        await asyncio.wait_for(pub.drained(), 15)
    assert metric(metrics, "success") == 2
    first, second = await receive_all(broker.connection_string, 2)

    assert first.message_id == f"{ORIGIN.node}:{notice().event_id}:noticed"
    assert first.content_type == "application/cloudevents+json; charset=utf-8"
    props = {
        k.decode() if isinstance(k, bytes) else k: v
        for k, v in first.application_properties.items()
    }
    props = {k: v.decode() if isinstance(v, bytes) else v for k, v in props.items()}
    assert props == {
        "type": "io.spotguard.notice.v1",
        "phase": "noticed",
        "kind": "preempt",
        "cluster": "aks-ml",
        "nodepool": "spot",
        "node": ORIGIN.node,
        "event_id": notice().event_id,
    }
    doc = json.loads(b"".join(first.body))
    assert doc["specversion"] == "1.0"
    assert doc["id"] == first.message_id
    assert doc["source"] == "/spotguard/aks-ml/aks-spot-12345678-vmss000003"
    assert doc["data"]["deadline"] == "2026-11-28T14:00:28.000Z"
    assert doc["data"]["kind"] == "preempt"

    assert second.message_id.endswith(":drained")
    outcome = json.loads(b"".join(second.body))
    assert outcome["type"] == "io.spotguard.outcome.v1"
    assert outcome["data"]["result"] == "drained"
    assert outcome["data"]["notice"]["event_id"] == notice().event_id


async def test_refused_sends_are_retried_until_they_go_through(broker: ServiceBusBroker) -> None:
    broker.add_fault("reject_send", count=2)
    metrics = Metrics(CollectorRegistry())
    with structlog.testing.capture_logs() as logs:
        async with running(publisher(broker.connection_string, metrics)) as pub:
            pub.publish(notice_event(notice(), ORIGIN, NOW))
            await asyncio.wait_for(pub.drained(), 20)
    assert metric(metrics, "success") == 1
    assert metric(metrics, "error") == 0
    failures = [line for line in logs if line["event"] == "publish_failed"]
    assert [f["attempt"] for f in failures] == [1, 2]
    assert "server-busy" in failures[0]["error"]
    (message,) = await receive_all(broker.connection_string, 1)
    assert message.message_id.endswith(":noticed")


async def test_service_bus_down_costs_a_counter_and_never_blocks() -> None:
    port = free_port()  # nothing listens there
    conn = (
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=k;SharedAccessKey=v;"
        "UseDevelopmentEmulator=true;"
    )
    metrics = Metrics(CollectorRegistry())
    loop = asyncio.get_running_loop()
    async with running(publisher(conn, metrics, min_window=1.5, max_pending=2)) as pub:
        started = loop.time()
        for phase in (Phase.CORDONED, Phase.DRAINED, Phase.ACKNOWLEDGED):
            pub.publish(outcome_event(notice(), ORIGIN, NOW, phase, result="x"))
        assert loop.time() - started < 0.01  # queued, not sent
        assert pub.pending == 2  # the oldest was dropped at once
        assert metric(metrics, "error") == 1
        await asyncio.wait_for(pub.drained(), 10)
        took = loop.time() - started
    assert metric(metrics, "error") == 3
    assert metric(metrics, "success") == 0
    assert 1.4 <= took < 4.0


async def test_dry_run_publishes_nothing(broker: ServiceBusBroker) -> None:
    metrics = Metrics(CollectorRegistry())
    async with running(publisher(broker.connection_string, metrics, dry_run=True)) as pub:
        pub.publish(notice_event(notice(), ORIGIN, NOW))
        await asyncio.wait_for(pub.drained(), 5)
    assert metric(metrics, "skipped") == 1
    assert broker.messages(QUEUE) == []


def test_credentials_are_one_or_the_other() -> None:
    assert auth_from("Endpoint=sb://x/;", None) == ConnectionStringAuth("Endpoint=sb://x/;")
    assert auth_from(None, "ns.servicebus.windows.net") == WorkloadIdentityAuth(
        "ns.servicebus.windows.net"
    )
    with pytest.raises(ConfigError, match="not both"):
        auth_from("Endpoint=sb://x/;", "ns.servicebus.windows.net")
    with pytest.raises(ConfigError, match="needs"):
        auth_from(None, None)


async def test_workload_identity_uses_the_workload_identity_credential(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """What AKS's webhook injects; nothing is contacted until a token is needed."""
    token_file = tmp_path / "token"
    token_file.write_text("federated-token")
    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000001")
    monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000002")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    client, credential = make_client(WorkloadIdentityAuth("ns.servicebus.windows.net"))
    try:
        assert isinstance(credential, WorkloadIdentityCredential)
        assert client.fully_qualified_namespace == "ns.servicebus.windows.net"
    finally:
        await client.close()
        await credential.close()
