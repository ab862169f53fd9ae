"""A local Azure Service Bus for tests and demos: AMQP 1.0 on python-qpid-proton, spoken to by the
real ``azure.servicebus`` SDK (7.15) over 127.0.0.1. What it models and what it does not:
``docs/servicebus-broker.md``.

In process, on a free port, in about 50 ms::

    with ServiceBusBroker(lock_duration=2, topics={"notices": ["fleet"]}) as sb:
        client = ServiceBusClient.from_connection_string(sb.connection_string)
        ...
        sb.messages("notices/subscriptions/fleet")   # inspection
        sb.inject("events", {"eventType": "..."}, application_properties={"aeg-event-type": ...})
        sb.add_fault("reject_send", count=2)          # see servicebus_faults

or as a command, ``spotguard simulate-servicebus --port 5672``, which prints one JSON line with the
connection string and serves until SIGTERM. The connection string carries
``UseDevelopmentEmulator=true``: the SDK then speaks plain AMQP (no TLS) to the given port, signs
in with SASL ANONYMOUS and sends its SAS token over ``$cbs``, which the broker accepts.

The broker's modules (all ``spotguard.sim.``):

- ``servicebus``: ``ServiceBusBroker`` (the reactor thread, the control API) and ``main``;
- ``servicebus_handler``: the proton handler (connections, links, transfers, settlement);
- ``servicebus_management``: ``$cbs`` and ``$management`` requests;
- ``servicebus_store``: queues, topics, subscriptions, dead-letter queues, locks;
- ``servicebus_message``: message sections, batch envelopes, requests and answers;
- ``servicebus_codec``: the AMQP 1.0 type codec;
- ``servicebus_faults``: injected faults.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from proton import Event
from proton.reactor import ApplicationEvent, Container, EventInjector
from structlog.typing import FilteringBoundLogger

from spotguard.clock import Clock, SystemClock
from spotguard.observability.logging import configure_logging, get_logger
from spotguard.sim.servicebus_faults import Fault, FaultKind, FaultQueue
from spotguard.sim.servicebus_handler import DEFAULT_MAX_MESSAGE_SIZE, BrokerHandler, Stats
from spotguard.sim.servicebus_message import build_message
from spotguard.sim.servicebus_store import (
    DEFAULT_LOCK_DURATION,
    DEFAULT_MAX_DELIVERY_COUNT,
    DLQ_SUFFIX,
    BrokerMessage,
    Store,
)

__all__ = [
    "BrokerError",
    "BrokerMessage",
    "Fault",
    "FaultKind",
    "ServiceBusBroker",
    "Stats",
    "main",
]

#: The key name and key of the Service Bus emulator's documented connection string.
KEY_NAME: Final = "RootManageSharedAccessKey"
KEY: Final = "SAS_KEY_VALUE"
_CALL: Final = "broker_call"

T = TypeVar("T")


class BrokerError(RuntimeError):
    pass


@dataclasses.dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any] = dataclasses.field(
        default_factory=concurrent.futures.Future
    )


class _Handler(BrokerHandler):
    """The broker handler plus the runner's cross-thread calls."""

    def on_broker_call(self, event: Event) -> None:
        call: _Call = event.subject
        try:
            call.future.set_result(call.fn())
            self.flush()
        except Exception as exc:  # handed to the calling thread
            call.future.set_exception(exc)


class ServiceBusBroker:
    """The broker on its own thread; every control method is safe to call from any thread (it
    runs on the reactor thread and waits for the answer, which takes well under a millisecond).

    ``topics`` maps each topic to its subscriptions; ``queues`` are declared up front (others are
    created on first use unless ``auto_create`` is off: then, as on Azure, the SDK's put-token for
    an unknown entity answers 404 and the SDK raises ``ServiceBusAuthenticationError``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        lock_duration: float = DEFAULT_LOCK_DURATION,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        auto_create: bool = True,
        queues: Iterable[str] = (),
        topics: Mapping[str, Iterable[str]] | None = None,
        clock: Clock | None = None,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self.host = host
        self._log = log or get_logger(component="servicebus-broker")
        self._store = Store(
            clock=clock or SystemClock(),
            lock_duration=lock_duration,
            max_delivery_count=max_delivery_count,
            auto_create=auto_create,
        )
        for queue in queues:
            self._store.declare_queue(queue)
        for topic, subscriptions in (topics or {}).items():
            self._store.declare_topic(topic, subscriptions)
        self._faults = FaultQueue(now=self._store.now)
        self._handler = _Handler(
            store=self._store,
            faults=self._faults,
            log=self._log,
            max_message_size=max_message_size,
            host=host,
            port=port,
        )
        self._store.on_available = self._handler.mark_available
        self._injector = EventInjector()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.port: int = port

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> Self:
        if self._thread is not None:
            raise BrokerError("the broker was started already")

        def started(port: int) -> None:
            self.port = port
            self._ready.set()

        self._handler.on_started = started
        self._thread = threading.Thread(target=self._run, name="servicebus-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._failure is not None:
            if not self._thread.is_alive():
                self._close_pipe()
            raise BrokerError(f"the broker did not start: {self._failure!r}")
        self._log.info("servicebus_broker_listening", host=self.host, port=self.port)
        return self

    def _run(self) -> None:
        try:
            # ``impl=None`` skips the client and server TLS contexts Container builds by default
            # (OpenSSL set-up, about 160 ms); this broker speaks plain AMQP only.
            container = Container(self._handler, impl=None)
            container.selectable(self._injector)
            container.run()
        except BaseException as exc:  # reported by start()
            self._failure = exc
            self._log.error("servicebus_broker_failed", error=repr(exc))
            self._ready.set()

    def stop(self, timeout: float = 5.0) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            return

        # A graceful end: no listener, no connections, no timers, no injector. The reactor
        # closes every socket it still holds and returns; stop() is only the backstop.
        self._injector.trigger(ApplicationEvent(_CALL, subject=_Call(self._handler.close)))
        self._injector.close()
        thread.join(timeout)
        if thread.is_alive():
            container = self._handler.container
            if container is not None:
                container.stop()  # not thread-safe, but the reactor is stuck anyway
            thread.join(1.0)
            raise BrokerError(f"the broker did not stop within {timeout:g}s")
        self._close_pipe()

    def _close_pipe(self) -> None:
        """proton never closes the injector's pipe."""
        for fd in self._injector.pipe:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def endpoint(self) -> str:
        return f"sb://{self.host}:{self.port}"

    @property
    def connection_string(self) -> str:
        """What ``ServiceBusClient.from_connection_string`` takes (plain AMQP to this port)."""
        return (
            f"Endpoint={self.endpoint};SharedAccessKeyName={KEY_NAME};"
            f"SharedAccessKey={KEY};UseDevelopmentEmulator=true;"
        )

    # --- control (any thread) -----------------------------------------------------------------

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """``fn()`` on the reactor thread; its result (or its exception)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            raise BrokerError("the broker is not running")
        if threading.current_thread() is thread:
            return fn()
        call = _Call(fn)
        self._injector.trigger(ApplicationEvent(_CALL, subject=call))
        result: T = call.future.result(timeout)
        return result

    def messages(self, entity: str) -> list[BrokerMessage]:
        """The messages of a queue, subscription or ``<entity>/$deadletterqueue`` (any state but
        scheduled), by sequence number."""
        return self.call(lambda: self._store.entity(entity).snapshot())

    def dead_letters(self, entity: str) -> list[BrokerMessage]:
        return self.messages(entity.rstrip("/") + DLQ_SUFFIX)

    def scheduled(self, entity: str) -> list[BrokerMessage]:
        """Messages sent to a queue or topic that wait for their enqueue time."""
        return self.call(lambda: self._store.scheduled(self._store.send_target(entity)))

    def inject(
        self,
        entity: str,
        body: bytes | str | dict[str, Any] | list[Any],
        **fields: Any,
    ) -> int:
        """Enqueue a message as a sender would (``message_id``, ``subject``, ``content_type``,
        ``correlation_id``, ``application_properties``, ``message_annotations``); a dict or list
        body is sent as JSON. The sequence number."""
        message = build_message(body, **fields)
        return self.call(lambda: self._store.enqueue(self._store.send_target(entity), message))

    def declare_queue(self, name: str, **settings: Any) -> None:
        self.call(lambda: self._store.declare_queue(name, **settings))

    def declare_topic(self, name: str, subscriptions: Iterable[str] = ()) -> None:
        subs = list(subscriptions)
        self.call(lambda: self._store.declare_topic(name, subs))

    def declare_subscription(self, topic: str, name: str, **settings: Any) -> None:
        self.call(lambda: self._store.declare_subscription(topic, name, **settings))

    def entities(self) -> list[str]:
        return self.call(self._store.names)

    def add_fault(self, kind: FaultKind | str, **fields: Any) -> Fault:
        """Script a fault (see ``servicebus_faults``): ``count``, ``seconds``, ``entity``,
        ``condition``, ``description``, ``delay``, ``status``."""
        fault = Fault.from_json({"kind": kind, **fields})
        self.call(lambda: self._faults.add(fault))
        return fault

    def clear_faults(self) -> None:
        self.call(self._faults.clear)

    def drop_connections(self, *, graceful: bool = False) -> int:
        """Close every client connection (TCP at once, or an AMQP close with
        ``amqp:connection:forced``); how many there were."""
        return self.call(lambda: self._handler.drop_connections(graceful=graceful))

    def stats(self) -> Stats:
        def copy() -> Stats:
            stats = self._handler.stats
            return dataclasses.replace(stats, errors=list(stats.errors))

        return self.call(copy)

    async def wait_for_messages(
        self, entity: str, count: int = 1, timeout: float = 5.0
    ) -> list[BrokerMessage]:
        """Poll (without blocking the event loop) until ``entity`` holds ``count`` messages."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while True:
            found = self.messages(entity)
            if len(found) >= count:
                return found
            if loop.time() >= until:
                raise TimeoutError(f"{entity}: {len(found)} of {count} messages in {timeout:g}s")
            await asyncio.sleep(0.02)


# --- command line ---------------------------------------------------------------------------


def _topics(specs: Iterable[str]) -> dict[str, list[str]]:
    """``--topic notices:fleet,audit`` -> ``{"notices": ["fleet", "audit"]}``."""
    topics: dict[str, list[str]] = {}
    for spec in specs:
        name, _, subs = spec.partition(":")
        if not name:
            raise ValueError(f"--topic {spec!r}: give NAME or NAME:SUB1,SUB2")
        topics.setdefault(name, []).extend(s for s in subs.split(",") if s)
    return topics


def _check_args(args: argparse.Namespace) -> str | None:
    if not 0 <= args.port <= 65535:
        return "--port must be 0-65535"
    if args.lock_duration <= 0 or args.max_delivery_count < 1 or args.max_message_size < 1:
        return "--lock-duration, --max-delivery-count and --max-message-size must be positive"
    try:
        _topics(args.topic or ())
    except ValueError as exc:
        return str(exc)
    return None


def main(args: argparse.Namespace) -> int:
    """``spotguard simulate-servicebus``: serve until SIGTERM/SIGINT; one JSON line on stdout."""
    problem = _check_args(args)
    if problem:
        print(f"spotguard simulate-servicebus: {problem}", file=sys.stderr)
        return 2
    configure_logging(fmt=args.log_format, level=args.log_level)
    # proton logs a broken pipe at ERROR whenever a client drops its socket: noise, not news.
    logging.getLogger("proton").setLevel(logging.CRITICAL)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        broker = ServiceBusBroker(
            host=args.host,
            port=args.port,
            lock_duration=args.lock_duration,
            max_delivery_count=args.max_delivery_count,
            max_message_size=args.max_message_size,
            auto_create=not args.strict,
            queues=args.queue or (),
            topics=_topics(args.topic or ()),
        )
        broker.start()
    except (OSError, ValueError, BrokerError) as exc:
        print(f"spotguard simulate-servicebus: {exc}", file=sys.stderr)
        return 1
    try:
        line = {
            "event": "listening",
            "host": broker.host,
            "port": broker.port,
            "connection_string": broker.connection_string,
            "entities": broker.entities(),
        }
        print(json.dumps(line), flush=True)
        stop.wait()
    finally:
        broker.stop()
    return 0
