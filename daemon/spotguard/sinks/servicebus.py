"""Publish notices and outcomes to Azure Service Bus, beside the drain and never in its way.

``publish()`` only queues a message (bounded: the oldest is dropped, counted, when full); one
background task sends them in order through one long-lived sender, retrying with jittered backoff
until each message's own give-up time (its notice's window, at least ``MIN_RETRY_WINDOW``). A
Service Bus that is down costs log lines and a counter, never a late eviction.

The SDK (``azure.servicebus.aio``, and ``azure.identity.aio`` for workload identity) is imported
only when a publisher actually connects: an agent without Service Bus settings never loads it
(about 20 MiB of the footprint budget).

Auth is a connection string (from a Secret) or workload identity with the fully qualified
namespace — ``WorkloadIdentityCredential`` only, never ``DefaultAzureCredential``, whose probes
reach IMDS and other endpoints. The entity can be a topic or a queue: on the wire both are an
AMQP target address, so one sender serves either.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from spotguard.errors import ConfigError
from spotguard.observability.metrics import Metrics
from spotguard.sinks.cloudevents import CONTENT_TYPE, CloudEvent

Logger = structlog.typing.FilteringBoundLogger

#: Messages waiting at most; a notice makes a handful, so this is hours of Service Bus outage.
MAX_PENDING = 512
#: Messages per send call (one AMQP batch transfer).
BATCH = 20
#: A message is retried at least this long, even past its notice's deadline.
MIN_RETRY_WINDOW = 30.0
OPEN_TIMEOUT = 10.0
SEND_TIMEOUT = 5.0
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
#: On shutdown, this long to send what is still queued.
FLUSH_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class ConnectionStringAuth:
    connection_string: str


@dataclass(frozen=True, slots=True)
class WorkloadIdentityAuth:
    namespace: str  # <name>.servicebus.windows.net


Auth = ConnectionStringAuth | WorkloadIdentityAuth


def auth_from(connection_string: str | None, namespace: str | None) -> Auth:
    """Which credential the settings ask for; exactly one of the two must be given."""
    if connection_string and namespace:
        raise ConfigError(
            "set either SPOTGUARD_SERVICEBUS_CONNECTION_STRING or SPOTGUARD_SERVICEBUS_NAMESPACE "
            "(workload identity), not both"
        )
    if connection_string:
        return ConnectionStringAuth(connection_string)
    if namespace:
        return WorkloadIdentityAuth(namespace)
    raise ConfigError(
        "Service Bus needs SPOTGUARD_SERVICEBUS_CONNECTION_STRING or "
        "SPOTGUARD_SERVICEBUS_NAMESPACE (workload identity)"
    )


def make_client(auth: Auth) -> tuple[Any, Any]:
    """An ``azure.servicebus.aio.ServiceBusClient`` with the SDK's own retries off (ours are
    bounded by the notice; the SDK's are not), and its credential to close (or None)."""
    from azure.servicebus.aio import ServiceBusClient

    if isinstance(auth, ConnectionStringAuth):
        client = ServiceBusClient.from_connection_string(auth.connection_string, retry_total=0)
        return client, None
    credential = workload_identity()
    return ServiceBusClient(auth.namespace, credential=credential, retry_total=0), credential


def workload_identity() -> Any:
    """AKS workload identity: tenant, client id and token file come from the environment the
    webhook injects (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE)."""
    from azure.identity.aio import WorkloadIdentityCredential

    return WorkloadIdentityCredential()


class Sender(Protocol):
    async def send_messages(self, message: Any, *, timeout: float | None = None) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Pending:
    event: CloudEvent
    give_up_at: float
    attempts: int = 0


class ServiceBusPublisher:
    def __init__(
        self,
        *,
        auth: Auth,
        entity: str,
        metrics: Metrics,
        log: Logger,
        dry_run: bool = False,
        max_pending: int = MAX_PENDING,
        min_window: float = MIN_RETRY_WINDOW,
        rng: random.Random | None = None,
    ) -> None:
        self._auth = auth
        self._entity = entity
        self._metrics = metrics
        self._log = log.bind(sink="servicebus", entity=entity)
        self._dry_run = dry_run
        self._queue: collections.deque[_Pending] = collections.deque()
        self._max_pending = max_pending
        self._min_window = min_window
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._client: Any = None
        self._credential: Any = None
        self._sender: Sender | None = None
        self._loop = asyncio.get_running_loop()

    # --- input -------------------------------------------------------------------------------

    def publish(self, event: CloudEvent, *, window_end: float | None = None) -> None:
        """Queue ``event``; retried until ``window_end`` (loop time), at least ``min_window``
        from now. Never blocks, never raises."""
        if self._dry_run:
            self._log.info("dry_run_publish", id=event.id, type=event.type)
            self._metrics.action("publish", "skipped")
            return
        now = self._loop.time()
        give_up = max(window_end or now, now + self._min_window)
        if len(self._queue) >= self._max_pending:
            dropped = self._queue.popleft()
            self._gave_up(dropped, "queue full: dropped the oldest message")
        self._queue.append(_Pending(event, give_up))
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def drained(self) -> None:
        """Until nothing is queued (sent or given up); for shutdown and tests."""
        await self._idle.wait()

    # --- the sending task ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                if not self._queue:
                    self._idle.set()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._send_some()
        finally:
            await self._flush_and_close()

    async def _send_some(self) -> None:
        self._expire()
        if not self._queue:
            return
        batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
        try:
            await self._send([p.event for p in batch])
        except Exception as exc:  # the SDK raises many types; all mean "not sent"
            await self._failed(batch, exc)
            return
        for pending in batch:
            # By identity: an overflow while we sent may have dropped some of the batch already.
            with contextlib.suppress(ValueError):
                self._queue.remove(pending)
            self._metrics.action("publish", "success")
        self._log.debug("published", count=len(batch), ids=[p.event.id for p in batch])

    async def _send(self, events: list[CloudEvent]) -> None:
        from azure.servicebus import ServiceBusMessage

        if self._sender is None:
            async with asyncio.timeout(OPEN_TIMEOUT):
                self._client, self._credential = make_client(self._auth)
                sender = self._client.get_queue_sender(self._entity)
                await sender.__aenter__()
                self._sender = sender
        messages = [
            ServiceBusMessage(
                e.body(),
                message_id=e.id,
                content_type=CONTENT_TYPE,
                subject=e.type,
                application_properties={k: v for k, v in e.properties.items()},
            )
            for e in events
        ]
        async with asyncio.timeout(SEND_TIMEOUT + 1):
            await self._sender.send_messages(messages, timeout=SEND_TIMEOUT)

    async def _failed(self, batch: list[_Pending], exc: Exception) -> None:
        attempt = max(p.attempts for p in batch) + 1
        for pending in batch:
            pending.attempts += 1
        self._log.warning(
            "publish_failed",
            error=f"{type(exc).__name__}: {exc}"[:300],
            attempt=attempt,
            pending=len(self._queue),
        )
        await self._close()  # a broken link is not reused; the next attempt reconnects
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(attempt - 1, 10))
        delay *= self._rng.uniform(0.5, 1.0)
        next_give_up = min(p.give_up_at for p in self._queue)
        await asyncio.sleep(max(0.0, min(delay, next_give_up - self._loop.time())))

    def _expire(self) -> None:
        now = self._loop.time()
        while self._queue and self._queue[0].give_up_at <= now:
            self._gave_up(self._queue.popleft(), "not sent within its notice window")

    def _gave_up(self, pending: _Pending, why: str) -> None:
        self._metrics.action("publish", "error")
        self._log.error(
            "publish_given_up", id=pending.event.id, attempts=pending.attempts, reason=why
        )

    async def _flush_and_close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(FLUSH_TIMEOUT):
                while self._queue:
                    await self._send_some()
        for pending in self._queue:
            self._gave_up(pending, "agent stopping")
        self._queue.clear()
        self._idle.set()
        await self._close()

    async def _close(self) -> None:
        sender, client, credential = self._sender, self._client, self._credential
        self._sender = self._client = self._credential = None
        for closable in (sender, client, credential):
            if closable is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await closable.close()
