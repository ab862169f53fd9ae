"""The agent publishes a preemption to Service Bus as it handles it, and a Service Bus outage during
the drain costs the drain nothing: the messages go out once the broker is back.

The broker is the local AMQP 1.0 broker (``spotguard.sim.servicebus``) in this process; the agent
is the real ``spotguard run`` with a connection string; subscribers read with the real SDK.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from azure.servicebus.aio import ServiceBusClient

from spotguard.sim.child_process import free_port
from spotguard.sim.servicebus import ServiceBusBroker
from tests.e2e.agent_harness import (
    OBSERVATION_SLACK,
    SAFETY_MARGIN,
    agent_harness,
    node_name,
    not_before,
    wait_node_drained,
)

TOPIC = "spotguard-notices"
#: Pods stop 1 s after they are asked: the drain is over in a few seconds.
QUICK = {"stop_after": 1.0}
#: A Preempt is not acknowledged by default (policy): no "acknowledged" message.
PHASES = {"noticed", "cordoned", "checkpointed", "drained"}
SUBSCRIPTION = "audit"


@contextmanager
def broker_on(port: int) -> Iterator[ServiceBusBroker]:
    with ServiceBusBroker(port=port, topics={TOPIC: [SUBSCRIPTION]}) as sb:
        yield sb


def agent_env(broker: ServiceBusBroker) -> dict[str, str]:
    return {
        "SPOTGUARD_SERVICEBUS_CONNECTION_STRING": broker.connection_string,
        "SPOTGUARD_SERVICEBUS_ENTITY": TOPIC,
        "SPOTGUARD_CLUSTER_NAME": "aks-ml",
    }


async def read(broker: ServiceBusBroker, want: int, timeout: float) -> list[Any]:
    """Messages of the audit subscription, completed, until ``want`` arrived or ``timeout``."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    async with (
        ServiceBusClient.from_connection_string(broker.connection_string) as client,
        client.get_subscription_receiver(TOPIC, SUBSCRIPTION) as receiver,
    ):
        while len(got) < want and time.monotonic() < deadline:
            for message in await receiver.receive_messages(max_message_count=20, max_wait_time=1):
                await receiver.complete_message(message)
                got.append(message)
    return got


def phases(messages: list[Any]) -> list[str]:
    return [str(m.message_id).rsplit(":", 1)[1] for m in messages]


async def test_a_preemption_is_published_as_it_is_handled(tmp_path: Path) -> None:
    node = node_name(0)
    with broker_on(0) as broker:
        async with agent_harness(tmp_path, env=agent_env(broker), emulator=QUICK) as h:
            event = await h.imds.inject("Preempt", not_before_in=20)
            event_id = event["event_id"]
            pods = h.cluster.pods_of(node, before=time.time())
            await wait_node_drained(h, node, event_id, pods, timeout=20)
            messages = await read(broker, 4, timeout=15)

    assert set(phases(messages)) == PHASES
    assert phases(messages)[0] == "noticed"  # published the moment it was seen
    assert len(messages) == len({m.message_id for m in messages})
    by_phase = {p: m for p, m in zip(phases(messages), messages, strict=True)}
    assert all(m.message_id == f"{node}:{event_id}:{p}" for p, m in by_phase.items())
    notice = json.loads(b"".join(messages[0].body))
    assert notice["type"] == "io.spotguard.notice.v1"
    assert notice["source"] == f"/spotguard/aks-ml/{node}"
    assert notice["data"]["event_id"] == event_id
    assert notice["data"]["kind"] == "preempt"
    drained = json.loads(b"".join(by_phase["drained"].body))
    assert drained["type"] == "io.spotguard.outcome.v1"
    assert drained["data"]["result"] == "drained"
    assert drained["data"]["notice"]["event_id"] == event_id
    props = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in messages[0].application_properties.items()
    }
    assert (props["kind"], props["cluster"], props["node"]) == ("preempt", "aks-ml", node)


async def test_service_bus_down_during_the_drain_delays_only_the_messages(
    tmp_path: Path,
) -> None:
    node = node_name(0)
    port = free_port()
    with broker_on(port) as first:
        env = agent_env(first)
    # The broker is gone before the notice: the agent cannot even connect.
    async with agent_harness(tmp_path, env=env, emulator=QUICK) as h:
        event = await h.imds.inject("Preempt", not_before_in=20)
        event_id = event["event_id"]
        deadline = not_before(event) - SAFETY_MARGIN
        pods = h.cluster.pods_of(node, before=time.time())
        last_gone = await wait_node_drained(h, node, event_id, pods, timeout=20)
        assert last_gone <= deadline + OBSERVATION_SLACK
        assert h.agent(0).events("publish_failed"), "Service Bus was not down after all"

        with broker_on(port) as broker:  # back, while the VM still lives
            messages = await read(broker, 4, timeout=12)
        assert time.time() < not_before(event)
        assert set(phases(messages)) == PHASES
        assert h.agent(0).events("publish_given_up") == []
