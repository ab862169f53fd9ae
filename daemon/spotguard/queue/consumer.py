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
from typing import Any

import structlog

from spotguard.clock import Clock
from spotguard.kube.client import KubeError
from spotguard.observability.metrics import Metrics
from spotguard.queue.events import InvalidEvent, parse_message
from spotguard.queue.leader import LeaderElector
from spotguard.queue.notices import NoticeCounter, parse_notice
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


def _raise_if_stopping() -> None:
    """Stop when this task was asked to, even if the request got lost on the way: in Python 3.11
    ``asyncio.wait_for`` (which the SDK's receive uses) can swallow a cancellation that arrives
    as its inner future completes (fixed in 3.12), and the loop would then receive for ever.
    ``cancelling()`` still counts the request."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class LeaderConsumer:
    """Receive from one queue or subscription while this replica leads (PEEK_LOCK, no prefetch:
    a message it holds is a message a standby cannot take over); ``_handle`` settles each."""

    def __init__(
        self,
        *,
        auth: Auth,
        leader: LeaderElector,
        log: Logger,
        rng: random.Random | None = None,
    ) -> None:
        self._auth = auth
        self._leader = leader
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

    async def _handle(self, receiver: Any, sender: Any, message: Any) -> None:
        raise NotImplementedError

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


class QueueConsumer(LeaderConsumer):
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
        super().__init__(auth=auth, leader=leader, log=log.bind(queue=queue), rng=rng)
        self._queue = queue
        self._recovery = recovery
        self._metrics = metrics
        self._clock = clock
        self._max_age = max_age

    def _receiver(self, client: Any) -> Any:
        from azure.servicebus import ServiceBusReceiveMode

        return client.get_queue_receiver(
            self._queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0
        )

    def _sender(self, client: Any) -> Any:
        return client.get_queue_sender(self._queue)

    async def _handle(self, receiver: Any, sender: Any, message: Any) -> None:
        log = self._log.bind(message_id=str(message.message_id), deliveries=message.delivery_count)
        body = b"".join(message.body)
        try:
            event = parse_message(
                body,
                content_type=message.content_type,
                application_properties=message.application_properties,
            )
        except InvalidEvent as exc:
            log.warning("queue_message_invalid", reason=exc.reason)
            await receiver.dead_letter_message(
                message, reason="InvalidEvent", error_description=exc.reason[:1024]
            )
            self._metrics.queue_message("dead_lettered")
            return
        try:
            result = await self._recovery.handle(event)
        except KubeError as exc:
            log.warning("queue_message_abandoned", error=str(exc), event_id=event.event_id)
            await receiver.abandon_message(message)
            self._metrics.queue_message("abandoned")
            return
        if result.outcome is Outcome.NOT_READY_YET:
            if self._clock.now() - event.occurred_at < self._max_age:
                delay = result.retry_after or DEFAULT_RETRY
                await self._later(sender, message, body, delay)
                log.info("queue_message_rescheduled", event_id=event.event_id, seconds=delay)
            else:
                log.warning("queue_message_expired", event_id=event.event_id, node=result.node)
        await receiver.complete_message(message)
        self._metrics.queue_message("completed")

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


class NoticeConsumer(LeaderConsumer):
    """Agents' notices from queue mode's subscription ``<topic>/<subscription>`` → the fleet
    count (``NoticeCounter``)."""

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
            log=log.bind(subscription=subscription),
            rng=rng,
        )
        self._topic = topic
        self._subscription = name
        self._counter = counter
        self._metrics = metrics

    def _receiver(self, client: Any) -> Any:
        from azure.servicebus import ServiceBusReceiveMode

        return client.get_subscription_receiver(
            topic_name=self._topic,
            subscription_name=self._subscription,
            receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
            prefetch_count=0,
        )

    async def _handle(self, receiver: Any, sender: Any, message: Any) -> None:
        log = self._log.bind(message_id=str(message.message_id), deliveries=message.delivery_count)
        try:
            notice = parse_notice(
                b"".join(message.body),
                content_type=message.content_type,
                application_properties=message.application_properties,
            )
        except InvalidEvent as exc:
            log.warning("notice_message_invalid", reason=exc.reason)
            await receiver.dead_letter_message(
                message, reason="InvalidNotice", error_description=exc.reason[:1024]
            )
            self._metrics.queue_message("dead_lettered")
            return
        try:
            await self._counter.handle(notice)
        except KubeError as exc:
            log.warning("notice_message_abandoned", error=str(exc))
            await receiver.abandon_message(message)
            self._metrics.queue_message("abandoned")
            return
        await receiver.complete_message(message)
        self._metrics.queue_message("completed")
