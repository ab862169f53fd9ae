"""The local Service Bus broker (``spotguard.sim.servicebus``) against the REAL azure-servicebus
SDK (``azure.servicebus.aio``, 7.15) over 127.0.0.1: what the agent's publisher and the queue
consumer rely on, exercised the way they will use it.

Each test gets its own broker (it starts in a few milliseconds) and its own client. Opening or
closing an SDK handler takes about half a second whatever the broker does, so the tests open as
few as they can and keep ``max_wait_time`` short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusMessageState,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageSizeExceededError,
    ServiceBusAuthenticationError,
    ServiceBusError,
    ServiceBusServerBusyError,
)
from proton import Delivery, Disposition, Message, Sender
from proton.utils import BlockingConnection, SendException

from spotguard.sim.servicebus import BrokerError, ServiceBusBroker

LOCK = 1.0  # seconds: short, so lock expiry is quick to observe
MAX_DELIVERIES = 3
WAIT = 0.5  # max_wait_time of every receive that expects messages to be there
CHILD_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def _quiet_proton() -> Iterator[None]:
    """proton logs a broken pipe at ERROR each time a client drops its socket: noise here."""
    logger = logging.getLogger("proton")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.fixture
def broker() -> Iterator[ServiceBusBroker]:
    with ServiceBusBroker(
        lock_duration=LOCK,
        max_delivery_count=MAX_DELIVERIES,
        topics={"notices": ["fleet", "audit"]},
    ) as sb:
        yield sb
        stats = sb.stats()
        assert stats.handler_errors == 0, stats.errors


@pytest_asyncio.fixture
async def client(broker: ServiceBusBroker) -> AsyncIterator[ServiceBusClient]:
    async with ServiceBusClient.from_connection_string(
        broker.connection_string, retry_backoff_factor=0.05
    ) as sb_client:
        yield sb_client


async def receive(
    receiver: ServiceBusReceiver, count: int, timeout: float = 5.0
) -> list[ServiceBusReceivedMessage]:
    """Exactly ``count`` messages (receive_messages may return fewer per call)."""
    got: list[ServiceBusReceivedMessage] = []
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while len(got) < count and loop.time() < until:
        got += await receiver.receive_messages(
            max_message_count=count - len(got), max_wait_time=WAIT
        )
    assert len(got) == count, f"received {len(got)} of {count}"
    return got


# --- the broker itself ------------------------------------------------------------------------


def test_the_broker_starts_in_milliseconds_and_stops_without_leaking() -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    ServiceBusBroker().start().stop()  # imports and first-use costs
    before = open_fds()
    started = time.monotonic()
    for _ in range(10):
        with ServiceBusBroker() as sb:
            assert sb.port > 0
    assert (time.monotonic() - started) / 10 < 0.1
    assert open_fds() == before
    taken = ServiceBusBroker().start()
    try:
        with pytest.raises(BrokerError, match="Address already in use"):
            ServiceBusBroker(port=taken.port).start()
    finally:
        taken.stop()
    assert open_fds() == before


# --- sending ---------------------------------------------------------------------------------


async def test_single_list_and_batch_sends_arrive_in_order_with_their_properties(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    async with client.get_queue_sender("notices-q") as sender:
        await sender.send_messages(
            ServiceBusMessage(
                json.dumps({"type": "io.spotguard.notice.v1"}),
                message_id="aks-spot-0:EV-1:noticed",
                subject="notice",
                content_type="application/cloudevents+json",
                correlation_id="EV-1",
                application_properties={"kind": "preempt", "attempt": 2, "dry": False},
            )
        )
        await sender.send_messages(
            [ServiceBusMessage(f"list-{i}", message_id=f"list-{i}") for i in range(2)]
        )
        batch = await sender.create_message_batch()
        for i in range(3):
            batch.add_message(ServiceBusMessage(f"batch-{i}", message_id=f"batch-{i}"))
        await sender.send_messages(batch)

    stored = broker.messages("NOTICES-Q")  # names are case-insensitive
    assert [m.message_id for m in stored] == [
        "aks-spot-0:EV-1:noticed", "list-0", "list-1", "batch-0", "batch-1", "batch-2",
    ]  # fmt: skip
    assert [m.sequence_number for m in stored] == sorted({m.sequence_number for m in stored})
    assert stored[0].json() == {"type": "io.spotguard.notice.v1"}
    assert stored[0].application_properties == {"kind": "preempt", "attempt": 2, "dry": False}
    assert stored[0].content_type == "application/cloudevents+json"

    async with client.get_queue_receiver("notices-q") as receiver:
        before = datetime.now(UTC)
        got = await receive(receiver, 6)
        first = got[0]
        assert first.message_id == "aks-spot-0:EV-1:noticed"
        assert first.subject == "notice"
        assert first.content_type == "application/cloudevents+json"
        assert first.correlation_id == "EV-1"
        # pyamqp hands string values out as bytes (it does with Azure too)
        assert first.application_properties == {b"kind": b"preempt", b"attempt": 2, b"dry": False}
        assert json.loads(str(first)) == {"type": "io.spotguard.notice.v1"}
        assert [str(m) for m in got[1:]] == ["list-0", "list-1", "batch-0", "batch-1", "batch-2"]
        assert [m.sequence_number for m in got] == [m.sequence_number for m in stored]
        assert all(m.delivery_count == 0 for m in got)
        assert first.enqueued_time_utc is not None
        assert first.enqueued_time_utc <= datetime.now(UTC)
        assert first.locked_until_utc is not None
        assert before < first.locked_until_utc <= datetime.now(UTC) + timedelta(seconds=LOCK)
        for message in got:
            await receiver.complete_message(message)
    assert broker.messages("notices-q") == []


async def test_a_message_over_256_kib_is_rejected_and_one_under_it_spans_frames(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    async with client.get_queue_sender("big") as sender:
        with pytest.raises(MessageSizeExceededError):
            await sender.send_messages(ServiceBusMessage(b"x" * 300_000))
        await sender.send_messages(ServiceBusMessage(b"y" * 200_000, message_id="200k"))
    [stored] = broker.messages("big")
    assert stored.message_id == "200k"
    assert stored.body == b"y" * 200_000
    assert broker.stats().messages_rejected == 1

    async with client.get_queue_receiver("big") as receiver:
        [got] = await receive(receiver, 1)
        assert b"".join(got.body) == b"y" * 200_000
        await receiver.complete_message(got)


async def test_topic_fans_out_to_every_subscription(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    async with client.get_topic_sender("notices") as sender:
        await sender.send_messages(ServiceBusMessage("to all", message_id="n-1"))
    fleet = broker.messages("notices/Subscriptions/fleet")
    audit = broker.messages("notices/subscriptions/AUDIT")
    assert [m.message_id for m in fleet] == [m.message_id for m in audit] == ["n-1"]

    async with client.get_subscription_receiver("notices", "fleet") as receiver:
        [got] = await receive(receiver, 1)
        assert str(got) == "to all"
        await receiver.complete_message(got)
    assert broker.messages("notices/subscriptions/fleet") == []
    assert [m.message_id for m in broker.messages("notices/subscriptions/audit")] == ["n-1"]


# --- settlement -------------------------------------------------------------------------------


async def test_abandon_redelivers_with_one_more_delivery_until_max_delivery_count_dead_letters(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    broker.inject("work", "retry me", message_id="w-1")
    async with client.get_queue_receiver("work") as receiver:
        for attempt in range(MAX_DELIVERIES):
            [got] = await receive(receiver, 1)
            assert got.message_id == "w-1"
            assert got.delivery_count == attempt
            await receiver.abandon_message(got)
        assert await receiver.receive_messages(max_wait_time=0.2) == []

    assert broker.messages("work") == []
    [dead] = broker.dead_letters("work")
    assert dead.message_id == "w-1"
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert dead.dead_letter_error_description == (
        f"Message could not be consumed after {MAX_DELIVERIES} delivery attempts."
    )
    assert dead.dead_letter_source == "work"


async def test_dead_letter_reason_and_description_are_read_back_from_the_dlq(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    broker.inject("events", {"eventType": "Bogus"}, message_id="e-1")
    async with client.get_queue_receiver("events") as receiver:
        [got] = await receive(receiver, 1)
        await receiver.dead_letter_message(
            got, reason="UnknownEventType", error_description="no handler for Bogus"
        )
    assert broker.messages("events") == []

    async with client.get_queue_receiver("events", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as dlq:
        [dead] = await receive(dlq, 1)
        assert dead.message_id == "e-1"
        assert json.loads(str(dead)) == {"eventType": "Bogus"}
        assert dead.dead_letter_reason == "UnknownEventType"
        assert dead.dead_letter_error_description == "no handler for Bogus"
        assert dead.dead_letter_source == "events"
        await dlq.complete_message(dead)
    assert broker.dead_letters("events") == []


async def test_lock_expiry_redelivers_and_a_late_complete_raises_lock_lost(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    broker.inject("slow", "take your time", message_id="s-1")
    async with client.get_queue_receiver("slow") as receiver:
        [first] = await receive(receiver, 1)
        assert first.delivery_count == 0
        [again] = await receive(receiver, 1, timeout=LOCK + 3)  # after the lock expired
        assert again.message_id == "s-1"
        assert again.delivery_count == 1
        assert again.lock_token != first.lock_token
        with pytest.raises(MessageLockLostError):
            await receiver.complete_message(first)
        await receiver.complete_message(again)
    assert broker.messages("slow") == []


async def test_renew_lock_keeps_the_message_and_peek_does_not_lock(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    for i in range(2):
        broker.inject("renewed", f"m{i}", message_id=f"m{i}")
    async with client.get_queue_receiver("renewed") as receiver:
        peeked = await receiver.peek_messages(max_message_count=10)
        assert [p.message_id for p in peeked] == ["m0", "m1"]
        assert all(p.state == ServiceBusMessageState.ACTIVE for p in peeked)
        got = await receive(receiver, 2)
        for _ in range(2):  # past the 1 s lock, renewed every 0.6 s
            await asyncio.sleep(LOCK * 0.6)
            until = await receiver.renew_message_lock(got[0])
            assert until > datetime.now(UTC)
        await receiver.complete_message(got[0])
        [back] = await receive(receiver, 1)  # the other one's lock expired meanwhile
        assert (back.message_id, back.delivery_count) == ("m1", 1)
        await receiver.complete_message(back)


async def test_receive_and_delete_removes_messages_as_they_are_handed_out(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    broker.inject("fire-and-forget", "once")
    async with client.get_queue_receiver(
        "fire-and-forget", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    ) as receiver:
        [got] = await receive(receiver, 1)
        assert str(got) == "once"
    assert broker.messages("fire-and-forget") == []


async def test_scheduled_messages_wait_for_their_time_and_can_be_cancelled(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    at = datetime.now(UTC) + timedelta(seconds=1)
    async with client.get_queue_sender("later") as sender:
        keep, drop = await sender.schedule_messages(
            [ServiceBusMessage("keep"), ServiceBusMessage("drop")], at
        )
        await sender.cancel_scheduled_messages(drop)
    assert [m.sequence_number for m in broker.scheduled("later")] in ([keep], [])
    [arrived] = await broker.wait_for_messages("later", 1, timeout=5)
    assert datetime.now(UTC) >= at
    assert (arrived.body, arrived.sequence_number) == (b"keep", keep)
    await asyncio.sleep(0.2)
    assert len(broker.messages("later")) == 1  # the cancelled one never comes


async def test_operations_the_broker_does_not_model_raise_in_the_sdk(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    broker.inject("deferred", "later, please")
    async with client.get_queue_receiver("deferred") as receiver:
        [got] = await receive(receiver, 1)
        await receiver.defer_message(got)
        with pytest.raises(ServiceBusError, match="not implemented"):
            await receiver.receive_deferred_messages([got.sequence_number])
    [kept] = broker.messages("deferred")
    assert kept.state == "deferred"


# --- failures of the consumer ----------------------------------------------------------------


async def test_a_receiver_closed_before_settling_gets_the_message_back_after_the_lock(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    broker.inject("unsettled", "closed on", message_id="u-1")
    async with client.get_queue_receiver("unsettled") as receiver:
        [got] = await receive(receiver, 1)
        assert got.delivery_count == 0
    # The lock outlives the link, as on Azure; it expires, then the message is back.
    async with client.get_queue_receiver("unsettled") as receiver:
        [again] = await receive(receiver, 1, timeout=LOCK + 3)
        assert (again.message_id, again.delivery_count) == ("u-1", 1)
        await receiver.complete_message(again)


CRASHING_RECEIVER = """
import asyncio, os, sys
from azure.servicebus.aio import ServiceBusClient

async def main():
    client = ServiceBusClient.from_connection_string(sys.argv[1])
    receiver = client.get_queue_receiver("crashy")
    [message] = await receiver.receive_messages(max_wait_time=5)
    print(message.message_id, message.delivery_count, flush=True)
    os._exit(3)  # a crash: nothing settled, nothing closed

asyncio.run(main())
"""


async def test_a_consumer_that_crashes_before_settling_gets_the_message_redelivered(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    broker.inject("crashy", "crash on me", message_id="c-1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_RECEIVER,
        broker.connection_string,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), CHILD_TIMEOUT)
    assert proc.returncode == 3
    assert out.decode().split() == ["c-1", "0"]
    assert [m.state for m in broker.messages("crashy")] == ["locked"]

    async with client.get_queue_receiver("crashy") as receiver:
        [again] = await receive(receiver, 1, timeout=LOCK + 3)
        assert (again.message_id, again.delivery_count) == ("c-1", 1)
        await receiver.complete_message(again)


async def test_competing_receivers_share_the_work_without_duplicates(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    total = 20
    for i in range(total):
        broker.inject("shared", str(i), message_id=str(i))

    seen: list[list[str]] = [[], []]

    async def consume(index: int) -> None:
        async with client.get_queue_receiver("shared") as receiver:
            while sum(len(s) for s in seen) < total:
                for message in await receiver.receive_messages(
                    max_message_count=3, max_wait_time=0.3
                ):
                    seen[index].append(str(message.message_id))
                    await receiver.complete_message(message)

    await asyncio.wait_for(asyncio.gather(consume(0), consume(1)), timeout=20)
    everything = seen[0] + seen[1]
    assert sorted(everything, key=int) == [str(i) for i in range(total)]  # each exactly once
    assert seen[0], "the second receiver got everything"
    assert seen[1], "the first receiver got everything"
    assert broker.messages("shared") == []


# --- control API: injection and faults -------------------------------------------------------


async def test_an_injected_event_grid_event_reads_like_one_routed_by_event_grid(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    event = {
        "id": "8d9b4c1e",
        "topic": "/subscriptions/0000/resourceGroups/mc_rg/providers/Microsoft.Compute/...",
        "subject": "/subscriptions/0000/.../virtualMachineScaleSets/aks-spot-1/virtualMachines/3",
        "eventType": "Microsoft.Resources.ResourceActionSuccess",
        "data": {"operationName": "Microsoft.Compute/virtualMachineScaleSets/delete/action"},
        "dataVersion": "2",
        "metadataVersion": "1",
        "eventTime": "2026-11-28T10:00:00Z",
    }
    seq = broker.inject(
        "spotguard-events",
        [event],
        message_id="8d9b4c1e",
        application_properties={
            "aeg-event-type": "Notification",
            "aeg-subscription-name": "SPOTGUARD",
            "aeg-delivery-count": 0,
        },
    )
    async with client.get_queue_receiver("spotguard-events") as receiver:
        [got] = await receive(receiver, 1)
        assert got.sequence_number == seq
        assert got.message_id == "8d9b4c1e"
        assert got.content_type == "application/json"
        assert got.application_properties[b"aeg-event-type"] == b"Notification"
        assert json.loads(str(got)) == [event]
        await receiver.complete_message(got)


async def test_rejected_and_detached_sends_are_retried_by_the_sdk_and_stored_once(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    broker.add_fault("reject_send", count=1, entity="busy")  # com.microsoft:server-busy
    broker.add_fault("detach_send", count=1, entity="busy")  # amqp:link:detach-forced
    async with client.get_queue_sender("busy") as sender:
        started = time.monotonic()
        await sender.send_messages(ServiceBusMessage("eventually", message_id="b-1"))
        assert time.monotonic() - started < 5
    assert [m.message_id for m in broker.messages("busy")] == ["b-1"]
    assert broker.stats().messages_rejected == 2


async def test_a_send_rejected_more_often_than_the_sdk_retries_raises_its_condition(
    broker: ServiceBusBroker,
) -> None:
    broker.add_fault("reject_send", seconds=30)
    async with (
        ServiceBusClient.from_connection_string(
            broker.connection_string, retry_total=1, retry_backoff_factor=0.05
        ) as sb_client,
        sb_client.get_queue_sender("overloaded") as sender,
    ):
        with pytest.raises(ServiceBusServerBusyError):
            await sender.send_messages(ServiceBusMessage("never stored"))
    assert broker.messages("overloaded") == []


async def test_dropped_and_closed_connections_are_reconnected_by_the_sdk(
    broker: ServiceBusBroker, client: ServiceBusClient
) -> None:
    async with client.get_queue_sender("flaky") as sender:
        await sender.send_messages(ServiceBusMessage("before", message_id="f-0"))
        # graceful: an AMQP close (amqp:connection:forced). After an abrupt TCP drop the SDK
        # 7.15 leaves its socket unclosed (a ResourceWarning, an error here).
        assert broker.drop_connections(graceful=True) == 1
        broker.add_fault("close_connection", count=1)
        await sender.send_messages(ServiceBusMessage("after", message_id="f-1"))
    assert [m.message_id for m in broker.messages("flaky")] == ["f-0", "f-1"]
    stats = broker.stats()
    assert stats.refused == 1
    assert stats.connections == 3  # the first, the one closed at once, the one that worked


async def test_a_refused_connection_is_closed_before_any_amqp(broker: ServiceBusBroker) -> None:
    broker.add_fault("refuse", count=1)
    for expect_refused in (True, False):
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        try:
            writer.write(b"AMQP\x03\x01\x00\x00")  # the SASL header the SDK starts with
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(8), 5)
        except ConnectionResetError:
            # Closed while our header was in flight: the kernel answers it with a reset.
            answer = b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionResetError):
                await writer.wait_closed()
        assert answer == (b"" if expect_refused else b"AMQP\x03\x01\x00\x00")
    assert broker.stats().refused == 1


async def test_a_delayed_send_outcome_times_the_send_out_but_the_message_is_stored(
    broker: ServiceBusBroker,
) -> None:
    broker.add_fault("delay_send", delay=2, count=1)
    async with (
        ServiceBusClient.from_connection_string(
            broker.connection_string, retry_total=0
        ) as sb_client,
        sb_client.get_queue_sender("slowpoke") as sender,
    ):
        with pytest.raises(ServiceBusError):
            await sender.send_messages(ServiceBusMessage("late ack", message_id="d-1"), timeout=0.5)
    # Lost acknowledgements are what makes publishers send twice: the broker kept it.
    assert [m.message_id for m in broker.messages("slowpoke")] == ["d-1"]


async def test_a_rejected_token_fails_authentication(broker: ServiceBusBroker) -> None:
    broker.add_fault("reject_token", status=401, seconds=30)
    async with ServiceBusClient.from_connection_string(
        broker.connection_string, retry_total=0
    ) as sb_client:
        sender = sb_client.get_queue_sender("locked-out")
        with pytest.raises(ServiceBusAuthenticationError):
            await sender.send_messages(ServiceBusMessage("denied"))
        await sender.close()
    assert broker.messages("locked-out") == []


async def test_a_strict_broker_answers_unknown_entities_not_found() -> None:
    with ServiceBusBroker(auto_create=False, queues=["known"]) as strict:
        async with ServiceBusClient.from_connection_string(
            strict.connection_string, retry_total=0
        ) as sb_client:
            sender = sb_client.get_queue_sender("unknown")
            # As on Azure: the put-token for the entity answers 404, the SDK raises an auth error.
            with pytest.raises(ServiceBusAuthenticationError) as failed:
                await sender.send_messages(ServiceBusMessage("lost"))
            assert "Status code: 404" in str(failed.value.__context__)
            assert "'sb://127.0.0.1:" in str(failed.value.__context__)
            await sender.close()
        assert strict.entities() == ["known"]


# --- robustness ------------------------------------------------------------------------------


class RawPayload:
    """What proton's BlockingSender sends: any bytes as one transfer, not only a Message."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def send(self, sender: Sender, tag: str | None = None) -> Delivery:
        delivery = sender.delivery(tag or sender.delivery_tag())
        sender.stream(self.payload)
        sender.advance()
        return delivery


def test_garbage_and_malformed_amqp_are_answered_not_fatal(broker: ServiceBusBroker) -> None:
    for junk in (
        b"GET / HTTP/1.1\r\n\r\n",
        b"AMQP\x00\x01\x00\x00" + b"\xff" * 64,  # AMQP header, then no frame
        b"AMQP\x03\x01\x00\x00" + b"\xff" * 64,  # SASL header, then no frame
    ):
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw:
            raw.sendall(junk)
            while raw.recv(4096):  # proton answers a framing error and closes
                pass

    conn = BlockingConnection(f"127.0.0.1:{broker.port}", timeout=5, allowed_mechs="ANONYMOUS")
    try:
        sender = conn.create_sender("raw")
        for junk in (b"\x00\x53\x77\xa1", b"\x40", b"\x00\x53\x75\xa1\x01x"):
            with pytest.raises(SendException) as refused:
                sender.send(RawPayload(junk))
            assert refused.value.state == Disposition.REJECTED
        sender.send(Message(id="ok", body="fine"))

        requests = conn.create_sender("raw/$management")
        answers = conn.create_receiver("raw/$management")
        for operation, body, status in (
            ("com.microsoft:receive-by-sequence-number", {}, 501),
            ("com.microsoft:renew-lock", "not a map", 400),
            ("com.microsoft:renew-lock", {"lock-tokens": [uuid.uuid4()]}, 410),
            ("com.microsoft:peek-message", {"from-sequence-number": 0, "message-count": 5}, 200),
        ):
            request_id = uuid.uuid4()
            requests.send(Message(id=request_id, properties={"operation": operation}, body=body))
            answer = answers.receive(timeout=5)
            answers.accept()
            assert answer.correlation_id == request_id
            assert answer.properties["statusCode"] == status, answer.properties
        with pytest.raises(SendException):
            requests.send(RawPayload(b"\xff"))
    finally:
        conn.close()
    [stored] = broker.messages("raw")
    assert stored.message_id == "ok"
    assert broker.stats().messages_rejected == 3
