"""Queue mode's Service Bus consumer: Event Grid events in, recoveries out, one message at a time.

Only the leader receives (PEEK_LOCK, no prefetch: a message it holds is a message a standby
cannot take over). Each message is settled only after it was handled:

- malformed or unknown → dead-lettered with the parser's reason (it would never get better);
- valid but needing no action (another annotation, another cluster's VM) → completed;
- handled (tainted, already done, node gone, Ready again) → completed;
- the node is still Ready, too early to say it is down → a copy is scheduled ``retry_after``
  later and the original completed (abandoning would redeliver at once and burn the delivery
  count in seconds); an event older than ``max_age`` whose node never went down is completed;
- the API server failed → abandoned: redelivered, and handled again from cluster state.

Losing the lease stops receiving; messages held then are released by closing the receiver and
redelivered to the new leader, which finds the work done on the node (idempotent by state).

``NoticeConsumer`` reads queue mode's own subscription of the agents' notices topic the same way
(``queue.notices``): a Preempt notice is claimed in the fleet ledger and counted once, anything
else that is a CloudEvent is completed, a malformed message dead-lettered, and an API error
abandons (the redelivery finds the claim in the ledger). ``LeaderConsumer`` is what both share:
receive only while leading, one message at a time, reconnect with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import timedelta
from typing import Any, Generic, TypeVar

import structlog

from spotguard.clock import Clock
from spotguard.kube.client import KubeError
from spotguard.observability.metrics import Metrics
from spotguard.queue.events import FleetEvent, InvalidEvent, parse_message
from spotguard.queue.leader import LeaderElector
from spotguard.queue.notices import NoticeCounter, NoticeMessage, parse_notice
from spotguard.queue.recovery import Outcome, RecoveryHandler
from spotguard.sinks.servicebus import Auth, make_client

Logger = structlog.typing.FilteringBoundLogger

RECEIVE_WAIT = 1.0
RECEIVE_BATCH = 10
SETTLE_TIMEOUT = 10.0
RECONNECT_MIN = 0.5
RECONNECT_MAX = 15.0
#: An event this old whose node is still Ready was not a VM going away for good.
MAX_AGE = timedelta(hours=1)
DEFAULT_RETRY = 30.0

#: What a consumer reads a message into.
T = TypeVar("T")


def _raise_if_stopping() -> None:
    """Stop when this task was asked to, even if the request got lost on the way: in Python 3.11
    ``asyncio.wait_for`` (which the SDK's receive uses) can swallow a cancellation that arrives
    as its inner future completes (fixed in 3.12), and the loop would then receive for ever.
    ``cancelling()`` still counts the request."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class LeaderConsumer(Generic[T]):
    """Receive from one queue or subscription while this replica leads (PEEK_LOCK, no prefetch:
    a message it holds is a message a standby cannot take over) and settle each message:
    dead-lettered when ``_parse`` cannot read it, abandoned (redelivered) when ``_process``
    meets an API server error, completed otherwise."""

    #: Log events of an unreadable and of an abandoned message; the dead-letter reason.
    _invalid_event = "queue_message_invalid"
    _abandoned_event = "queue_message_abandoned"
    _invalid_reason = "InvalidEvent"

    def __init__(
        self,
        *,
        auth: Auth,
        leader: LeaderElector,
        metrics: Metrics,
        log: Logger,
        rng: random.Random | None = None,
    ) -> None:
        self._auth = auth
        self._leader = leader
        self._metrics = metrics
        self._log = log
        self._rng = rng or random.Random()

    async def run(self) -> None:
        failures = 0
        while True:
            await self._leader.is_leader.wait()
            term = self._leader.term
            try:
                await self._consume(term)
                failures = 0
            except Exception as exc:  # the SDK raises many types; all mean "reconnect"
                failures += 1
                delay = min(RECONNECT_MAX, RECONNECT_MIN * 2 ** min(failures, 8))
                self._log.warning(
                    "queue_receive_failed",
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay * self._rng.uniform(0.5, 1.0))

    def _leading(self, term: int) -> bool:
        return self._leader.is_leader.is_set() and self._leader.term == term

    def _receiver(self, client: Any) -> Any:
        """The receiver to open on ``client`` (an async context manager)."""
        raise NotImplementedError

    def _sender(self, client: Any) -> Any:
        """A sender to open beside it, or None."""
        return None

    def _parse(self, body: bytes, message: Any) -> T:
        """The message read; ``InvalidEvent`` if it cannot be (it would never get better)."""
        raise NotImplementedError

    def _log_fields(self, item: T) -> dict[str, Any]:
        """What to bind to the message's log lines once it is read."""
        return {}

    async def _process(self, item: T, body: bytes, message: Any, sender: Any, log: Logger) -> None:
        """Act on it; ``KubeError`` abandons the message (redelivered, handled again)."""
        raise NotImplementedError

    async def _handle(self, receiver: Any, sender: Any, message: Any) -> None:
        log = self._log.bind(message_id=str(message.message_id), deliveries=message.delivery_count)
        body = b"".join(message.body)
        try:
            item = self._parse(body, message)
        except InvalidEvent as exc:
            log.warning(self._invalid_event, reason=exc.reason)
            await receiver.dead_letter_message(
                message, reason=self._invalid_reason, error_description=exc.reason[:1024]
            )
            self._metrics.queue_message("dead_lettered")
            return
        log = log.bind(**self._log_fields(item))
        try:
            await self._process(item, body, message, sender, log)
        except KubeError as exc:
            log.warning(self._abandoned_event, error=str(exc))
            await receiver.abandon_message(message)
            self._metrics.queue_message("abandoned")
            return
        await receiver.complete_message(message)
        self._metrics.queue_message("completed")

    async def _consume(self, term: int) -> None:
        client, credential = make_client(self._auth)
        try:
            async with client, contextlib.AsyncExitStack() as links:
                receiver = await links.enter_async_context(self._receiver(client))
                opened = self._sender(client)
                sender = await links.enter_async_context(opened) if opened is not None else None
                self._log.info("queue_consuming", term=term)
                while self._leading(term):
                    messages = await receiver.receive_messages(
                        max_message_count=RECEIVE_BATCH, max_wait_time=RECEIVE_WAIT
                    )
                    _raise_if_stopping()
                    for message in messages:
                        if not self._leading(term):
                            break  # the rest are released when the receiver closes
                        await self._handle(receiver, sender, message)
                self._log.info("queue_stopped_consuming", term=term)
        finally:
            if credential is not None:
                with contextlib.suppress(Exception):
                    await credential.close()


class QueueConsumer(LeaderConsumer[FleetEvent]):
    """Event Grid events from ``queue`` → ``RecoveryHandler``."""

    def __init__(
        self,
        *,
        auth: Auth,
        queue: str,
        recovery: RecoveryHandler,
        leader: LeaderElector,
        metrics: Metrics,
        clock: Clock,
        log: Logger,
        max_age: timedelta = MAX_AGE,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            auth=auth, leader=leader, metrics=metrics, log=log.bind(queue=queue), rng=rng
        )
        self._queue = queue
        self._recovery = recovery
        self._clock = clock
        self._max_age = max_age

    def _receiver(self, client: Any) -> Any:
        from azure.servicebus import ServiceBusReceiveMode

        return client.get_queue_receiver(
            self._queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0
        )

    def _sender(self, client: Any) -> Any:
        return client.get_queue_sender(self._queue)

    def _parse(self, body: bytes, message: Any) -> FleetEvent:
        return parse_message(
            body,
            content_type=message.content_type,
            application_properties=message.application_properties,
        )

    def _log_fields(self, item: FleetEvent) -> dict[str, Any]:
        return {"event_id": item.event_id}

    async def _process(
        self, item: FleetEvent, body: bytes, message: Any, sender: Any, log: Logger
    ) -> None:
        result = await self._recovery.handle(item)
        if result.outcome is not Outcome.NOT_READY_YET:
            return
        if self._clock.now() - item.occurred_at < self._max_age:
            delay = result.retry_after or DEFAULT_RETRY
            await self._later(sender, message, body, delay)
            log.info("queue_message_rescheduled", seconds=delay)
        else:
            log.warning("queue_message_expired", node=result.node)

    async def _later(self, sender: Any, message: Any, body: bytes, delay: float) -> None:
        """The same message again in ``delay`` seconds (Service Bus scheduled delivery)."""
        from azure.servicebus import ServiceBusMessage

        copy = ServiceBusMessage(
            body,
            message_id=message.message_id,
            content_type=message.content_type,
            subject=message.subject,
            application_properties=dict(message.application_properties or {}),
        )
        when = self._clock.now() + timedelta(seconds=delay)
        await sender.schedule_messages(copy, when, timeout=SETTLE_TIMEOUT)


class NoticeConsumer(LeaderConsumer[NoticeMessage]):
    """Agents' notices from queue mode's subscription ``<topic>/<subscription>`` → the fleet
    count (``NoticeCounter``)."""

    _invalid_event = "notice_message_invalid"
    _abandoned_event = "notice_message_abandoned"
    _invalid_reason = "InvalidNotice"

    def __init__(
        self,
        *,
        auth: Auth,
        subscription: str,
        counter: NoticeCounter,
        leader: LeaderElector,
        metrics: Metrics,
        log: Logger,
        rng: random.Random | None = None,
    ) -> None:
        topic, _, name = subscription.partition("/")
        if not topic or not name or "/" in name:
            raise ValueError(f"a subscription is <topic>/<subscription>, not {subscription!r}")
        super().__init__(
            auth=auth,
            leader=leader,
            metrics=metrics,
            log=log.bind(subscription=subscription),
            rng=rng,
        )
        self._topic = topic
        self._subscription = name
        self._counter = counter

    def _receiver(self, client: Any) -> Any:
        from azure.servicebus import ServiceBusReceiveMode

        return client.get_subscription_receiver(
            topic_name=self._topic,
            subscription_name=self._subscription,
            receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
            prefetch_count=0,
        )

    def _parse(self, body: bytes, message: Any) -> NoticeMessage:
        return parse_notice(
            body,
            content_type=message.content_type,
            application_properties=message.application_properties,
        )

    async def _process(
        self, item: NoticeMessage, body: bytes, message: Any, sender: Any, log: Logger
    ) -> None:
        await self._counter.handle(item)
