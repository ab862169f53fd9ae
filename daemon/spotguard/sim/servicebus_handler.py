"""The local Service Bus broker's AMQP side: one ``proton.Handler`` on the proton reactor.

What the azure-servicebus 7.15 SDK does over the wire, and what this handler answers:

- SASL ANONYMOUS, then an Open (answered with our container id and properties), sessions;
- ``$cbs`` request/response links: every put-token is answered (see ``servicebus_management``);
- a **sender** link (the SDK sends; target ``amqps://host:port/<entity>``): each transfer is a
  message, or a batch envelope (message-format 0x80013700, recognised by its shape) whose messages
  are stored one by one. The outcome is ``accepted``, or ``rejected`` with
  ``amqp:link:message-size-exceeded`` over ``max_message_size``, or what a fault says;
- a **receiver** link (source ``.../<entity>`` or ``.../<entity>/$DeadLetterQueue``): messages go
  out as the SDK grants credit, with 16-byte delivery tags (the SDK's lock token is
  ``UUID(bytes_le=tag)``) and ``x-opt-*`` annotations. PEEK_LOCK (receiver settle mode *second*):
  the SDK's disposition is applied to the store (``accepted`` = complete; ``modified`` with
  ``delivery-failed`` = abandon, with ``undeliverable-here`` = defer; ``released``; ``rejected`` =
  dead-letter, reason and description from the error's info), then **echoed** in a settled
  disposition, which 7.15 waits for. A settlement whose lock is gone is answered ``rejected`` with
  ``com.microsoft:message-lock-lost``. RECEIVE_AND_DELETE (sender settle mode *settled*): messages
  go out settled and are removed. A drain request is answered at once when nothing is left;
- ``<entity>/$management`` request/response links (see ``servicebus_management``).

Every ``on_*`` method is guarded: an exception is logged and counted (``Stats.handler_errors``),
never allowed to stop the reactor. Error conditions always carry a non-empty info map (the SDK
reads ``error[2]`` without a length check).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, cast

from proton import Condition, Connection, Delivery, Disposition, Endpoint, Event, Handler, Link
from proton import symbol as proton_symbol
from proton._reactor import Acceptor, Task
from proton.reactor import Container
from structlog.typing import FilteringBoundLogger

from spotguard.sim.servicebus_codec import DecodeError
from spotguard.sim.servicebus_faults import SEND_FAULTS, FaultKind, FaultQueue
from spotguard.sim.servicebus_management import cbs_reply, management_reply, render
from spotguard.sim.servicebus_message import (
    SCHEDULED_ENQUEUE_TIME,
    Message,
    parse_message,
    split_batch,
)
from spotguard.sim.servicebus_store import (
    Entity,
    Store,
    StoreError,
    Topic,
    normalize,
)

CBS: Final = "$cbs"
MANAGEMENT_SUFFIX: Final = "/$management"
CONTAINER_ID: Final = "spotguard-servicebus-broker"
#: Standard tier: 256 KiB per message (and per batch).
DEFAULT_MAX_MESSAGE_SIZE: Final = 256 * 1024
_CREDIT: Final = 100
_TICK: Final = 0.05  # seconds between lock-expiry / schedule checks
_DEAD_LETTER_CONDITION: Final = "com.microsoft:dead-letter"
_TRACKING: Final = proton_symbol("com.microsoft:tracking-id")


@dataclass(slots=True)
class Stats:
    """Counters of what the broker did (read them through ``ServiceBusBroker.stats``)."""

    connections: int = 0
    refused: int = 0
    messages_received: int = 0
    messages_rejected: int = 0
    deliveries: int = 0
    settlements: int = 0
    management_requests: int = 0
    handler_errors: int = 0
    errors: list[str] = field(default_factory=list)


def guarded(
    method: Callable[[BrokerHandler, Event], None],
) -> Callable[[BrokerHandler, Event], None]:
    """Log and count an exception instead of letting it stop the reactor; pump afterwards."""

    def run(self: BrokerHandler, event: Event) -> None:
        try:
            method(self, event)
            self.flush()
        except Exception as exc:  # a client's bad input must not end the broker
            self.stats.handler_errors += 1
            self.stats.errors.append(f"{method.__name__}: {exc!r}")
            del self.stats.errors[:-20]
            self.log.warning("servicebus_handler_error", handler=method.__name__, error=repr(exc))

    run.__name__ = method.__name__
    return run


def _link(event: Event) -> Link:
    link = event.link
    assert link is not None, "a link event without a link"
    return link


def _delivery(event: Event) -> Delivery:
    dlv = event.delivery
    assert dlv is not None, "a delivery event without a delivery"
    return dlv


def _connection(event: Event) -> Connection:
    conn = event.connection
    assert conn is not None, "a connection event without a connection"
    return conn


def _tag(token: bytes) -> str:
    """proton annotates delivery tags as ``str`` but takes bytes (and the SDK needs binary)."""
    return cast("str", token)


def _condition(name: str, description: str) -> Condition:
    return Condition(name, description, {_TRACKING: str(uuid.uuid4())})


@dataclass(slots=True, eq=False)
class _LinkRole:
    """What a link is for: ``kind`` is ``send`` (client sends to ``target``), ``receive``
    (client receives from ``entity``), ``cbs-in``/``cbs-out``, ``mgmt-in``/``mgmt-out``."""

    kind: str
    address: str
    entity: Entity | None = None
    target: Entity | Topic | None = None
    peek_lock: bool = True


class _Later(Handler):
    """A one-shot timer task on the reactor."""

    def __init__(self, action: Callable[[Task], None]) -> None:
        super().__init__()
        self._action = action

    def on_timer_task(self, event: Event) -> None:
        task = event.context
        assert isinstance(task, Task)
        self._action(task)


class BrokerHandler(Handler):
    """See the module docstring. Runs on the reactor thread only."""

    def __init__(
        self,
        *,
        store: Store,
        faults: FaultQueue,
        log: FilteringBoundLogger,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__()
        self.store = store
        self.faults = faults
        self.log = log
        self.max_message_size = max_message_size
        self.stats = Stats()
        self._listen = (host, port)
        self.port: int | None = None
        self.container: Container | None = None
        self._acceptor: Acceptor | None = None
        self._tasks: set[Task] = set()
        self._closing = False
        self._links: dict[Link, _LinkRole] = {}
        self._outgoing: dict[Delivery, uuid.UUID] = {}  # PEEK_LOCK deliveries -> lock tokens
        self._connections: set[Connection] = set()
        self._dirty: set[Entity] = set()
        self.on_started: Callable[[int], None] = lambda port: None

    # --- reactor ------------------------------------------------------------------------------

    def on_reactor_init(self, event: Event) -> None:
        self.container = event.container
        host, port = self._listen
        if port:
            # proton's listen() leaks its socket when bind fails: find out with our own first.
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        self._acceptor = event.container.listen(f"{host}:{port}")
        # proton has no API for the port it bound
        self.port = int(self._acceptor._selectable.getsockname()[1])
        self._schedule(_TICK, self)
        self.on_started(self.port)

    @guarded
    def on_timer_task(self, event: Event) -> None:
        self._tasks.discard(event.context)
        if not self._closing:
            self._schedule(_TICK, self)
            self.store.tick()

    def _schedule(self, delay: float, handler: Handler) -> None:
        assert self.container is not None
        self._tasks.add(self.container.schedule(delay, handler))

    def later(self, delay: float, action: Callable[[], None]) -> None:
        """``action`` on the reactor after ``delay`` seconds (guarded like an event)."""

        def guarded_action(task: Task) -> None:
            self._tasks.discard(task)
            try:
                action()
                self.flush()
            except Exception as exc:  # see guarded
                self.stats.handler_errors += 1
                self.log.warning("servicebus_handler_error", handler="later", error=repr(exc))

        self._schedule(delay, _Later(guarded_action))

    def close(self) -> None:
        """Stop listening, drop every connection and cancel every timer: the reactor then runs
        out of work, closes the sockets and returns."""
        self._closing = True
        if self._acceptor is not None:
            self._acceptor.close()
        self.drop_connections(graceful=False)
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    def mark_available(self, entity: Entity) -> None:
        """The store's callback: ``entity`` has messages to hand out (pumped after this event)."""
        self._dirty.add(entity)

    def flush(self) -> None:
        while self._dirty:
            self._pump(self._dirty.pop())

    # --- connections --------------------------------------------------------------------------

    @guarded
    def on_connection_bound(self, event: Event) -> None:
        transport = event.transport
        assert transport is not None
        if self.faults.take(frozenset({FaultKind.REFUSE})) is not None:
            self.stats.refused += 1
            transport.close_head()
            transport.close_tail()
            return
        self.stats.connections += 1
        self._connections.add(_connection(event))
        transport.sasl().allowed_mechs("ANONYMOUS")

    @guarded
    def on_connection_remote_open(self, event: Event) -> None:
        conn = _connection(event)
        conn.container = CONTAINER_ID
        conn.properties = {proton_symbol("product"): "spotguard local Service Bus broker"}
        conn.open()
        fault = self.faults.take(frozenset({FaultKind.CLOSE_CONNECTION}))
        if fault is not None:
            self.stats.refused += 1
            self._forget_connection(conn)
            conn.condition = _condition(fault.error_condition, fault.description)
            conn.close()

    @guarded
    def on_connection_remote_close(self, event: Event) -> None:
        self._forget_connection(_connection(event))
        _connection(event).close()

    @guarded
    def on_transport_closed(self, event: Event) -> None:
        if event.connection is not None:
            self._forget_connection(event.connection)

    def _forget_connection(self, conn: Connection) -> None:
        self._connections.discard(conn)
        for link in [lnk for lnk in self._links if lnk.connection == conn]:
            self._forget_link(link)

    def drop_connections(self, *, graceful: bool) -> int:
        """Close every client connection: an AMQP close (``amqp:connection:forced``) or, not
        ``graceful``, the TCP connection at once. How many there were."""
        conns = list(self._connections)
        for conn in conns:
            self._forget_connection(conn)
            if graceful:
                conn.condition = _condition("amqp:connection:forced", "closed by the test broker")
                conn.close()
            elif conn.transport is not None:
                conn.transport.close_head()
                conn.transport.close_tail()
        return len(conns)

    @guarded
    def on_session_remote_open(self, event: Event) -> None:
        assert event.session is not None
        event.session.open()

    @guarded
    def on_session_remote_close(self, event: Event) -> None:
        assert event.session is not None
        event.session.close()

    # --- links --------------------------------------------------------------------------------

    @guarded
    def on_link_remote_open(self, event: Event) -> None:
        link = _link(event)
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        address = (link.remote_source if link.is_sender else link.remote_target).address or ""
        try:
            role = self._role(link, address)
        except StoreError as exc:
            link.open()
            link.condition = _condition(exc.condition, str(exc))
            link.close()
            return
        self._links[link] = role
        if link.is_receiver:
            if role.kind == "send":
                link.max_message_size = self.max_message_size
            link.open()
            link.flow(_CREDIT)
        else:
            link.open()
            if role.entity is not None:
                self._dirty.add(role.entity)

    def _role(self, link: Link, address: str) -> _LinkRole:
        path = normalize(address)
        if path == CBS:
            return _LinkRole("cbs-out" if link.is_sender else "cbs-in", path)
        if path.endswith(MANAGEMENT_SUFFIX):
            return _LinkRole("mgmt-out" if link.is_sender else "mgmt-in", path)
        if link.is_receiver:
            return _LinkRole("send", path, target=self.store.send_target(path))
        settled = link.remote_snd_settle_mode == Link.SND_SETTLED
        return _LinkRole("receive", path, entity=self.store.entity(path), peek_lock=not settled)

    @guarded
    def on_link_remote_close(self, event: Event) -> None:
        link = _link(event)
        self._forget_link(link)
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.close()

    @guarded
    def on_link_remote_detach(self, event: Event) -> None:
        link = _link(event)
        self._forget_link(link)
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.detach()

    def _forget_link(self, link: Link) -> None:
        """A link is gone: its locks stay until they expire (as on Azure)."""
        self._links.pop(link, None)
        for dlv in [d for d in self._outgoing if d.link == link]:
            del self._outgoing[dlv]

    @guarded
    def on_link_flow(self, event: Event) -> None:
        link = _link(event)
        role = self._links.get(link)
        if role is not None and role.entity is not None:
            self._pump(role.entity)
        elif link.is_sender and link.drain_mode:
            link.drained()

    def _pump(self, entity: Entity) -> None:
        """Hand out available messages to the entity's receivers with credit, in turn."""
        links = [
            (link, role)
            for link, role in self._links.items()
            if role.entity is entity and link.state & Endpoint.LOCAL_ACTIVE
        ]
        progress = True
        while progress:
            progress = False
            for link, role in links:
                if link.credit > 0 and self._send_one(link, role, entity):
                    progress = True
        for link, _ in links:
            if link.drain_mode and link.credit > 0:
                link.drained()

    def _send_one(self, link: Link, role: _LinkRole, entity: Entity) -> bool:
        stored = self.store.acquire(entity, lock=role.peek_lock)
        if stored is None:
            return False
        token = stored.lock_token or uuid.uuid4()
        payload = render(stored, locked_until=stored.locked_until).encode()
        dlv = link.delivery(_tag(token.bytes_le))
        link.send(payload)
        if role.peek_lock:
            self._outgoing[dlv] = token
        else:
            dlv.settle()
        link.advance()
        self.stats.deliveries += 1
        return True

    # --- deliveries ---------------------------------------------------------------------------

    @guarded
    def on_delivery(self, event: Event) -> None:
        dlv = _delivery(event)
        if dlv.link.is_sender:
            self._settlement(dlv)
            return
        if dlv.aborted:
            dlv.settle()
            return
        if not dlv.readable or dlv.partial:
            return
        link = dlv.link
        payload = bytes(link.recv(dlv.pending) or b"")
        link.advance()
        if link.credit < _CREDIT // 2:
            link.flow(_CREDIT - link.credit)
        role = self._links.get(link)
        if role is None:
            self._finish(dlv, Disposition.REJECTED, ("amqp:not-found", "unknown link"))
        elif role.kind == "send":
            self._receive_message(dlv, link, role, payload)
        elif role.kind in ("cbs-in", "mgmt-in"):
            self._request(dlv, link, role, payload)
        else:
            self._finish(dlv, Disposition.REJECTED, ("amqp:not-allowed", "not a sending link"))

    def _finish(self, dlv: Delivery, state: int, error: tuple[str, str] | None = None) -> None:
        if error is not None:
            dlv.local.condition = _condition(*error)
        dlv.update(state)
        dlv.settle()

    def _receive_message(self, dlv: Delivery, link: Link, role: _LinkRole, payload: bytes) -> None:
        assert role.target is not None
        if len(payload) > self.max_message_size:
            self.stats.messages_rejected += 1
            size = f"{len(payload)} bytes is over the limit of {self.max_message_size}"
            self._finish(
                dlv, Disposition.REJECTED, ("amqp:link:message-size-exceeded", f"message of {size}")
            )
            return
        try:
            message = parse_message(payload)
        except DecodeError as exc:
            self.stats.messages_rejected += 1
            self._finish(dlv, Disposition.REJECTED, ("amqp:decode-error", str(exc)))
            return
        fault = self.faults.take(SEND_FAULTS, role.target.name)
        if fault is not None and fault.kind is FaultKind.REJECT_SEND:
            self.stats.messages_rejected += 1
            self._finish(dlv, Disposition.REJECTED, (fault.error_condition, fault.description))
            return
        if fault is not None and fault.kind is FaultKind.DETACH_SEND:
            self.stats.messages_rejected += 1
            self._forget_link(link)
            link.condition = _condition(fault.error_condition, fault.description)
            link.close()
            return
        for each in split_batch(message) or [message]:
            self._store(role.target, each)
        if fault is not None and fault.kind is FaultKind.DELAY_SEND:
            self.later(fault.delay, lambda: self._finish(dlv, Disposition.ACCEPTED))
            return
        self._finish(dlv, Disposition.ACCEPTED)

    def _store(self, target: Entity | Topic, message: Message) -> None:
        when = message.annotation(SCHEDULED_ENQUEUE_TIME)
        scheduled = when / 1000 if isinstance(when, int) and not isinstance(when, bool) else None
        self.store.enqueue(target, message, scheduled_for=scheduled)
        self.stats.messages_received += 1

    def _request(self, dlv: Delivery, link: Link, role: _LinkRole, payload: bytes) -> None:
        try:
            request = parse_message(payload)
        except DecodeError as exc:
            self._finish(dlv, Disposition.REJECTED, ("amqp:decode-error", str(exc)))
            return
        self._finish(dlv, Disposition.ACCEPTED)
        if role.kind == "cbs-in":
            entity = normalize(str(request.application_properties.get("name") or ""))
            fault = self.faults.take(frozenset({FaultKind.REJECT_TOKEN}), entity or None)
            reply = cbs_reply(request, fault, known=self.store.knows(entity))
        else:
            self.stats.management_requests += 1
            entity_path = role.address.removesuffix(MANAGEMENT_SUFFIX)
            reply = management_reply(
                self.store, lambda: self._management_target(entity_path), request
            )
        out = self._response_link(link, role)
        if out is None:
            self.log.warning("servicebus_no_response_link", address=role.address)
            return
        response = out.delivery(_tag(uuid.uuid4().bytes))
        out.send(reply.encode())
        if out.snd_settle_mode == Link.SND_SETTLED:
            response.settle()
        out.advance()

    def _management_target(self, path: str) -> Entity | Topic:
        return self.store.send_target(path) if "/" not in path else self.store.entity(path)

    def _response_link(self, request_link: Link, role: _LinkRole) -> Link | None:
        """The paired link that carries answers: same address, the other direction; on the
        request's session if there is one there, else on its connection."""
        out_kind = role.kind.replace("-in", "-out")
        candidates = [
            link
            for link, r in self._links.items()
            if r.kind == out_kind
            and r.address == role.address
            and link.connection == request_link.connection
        ]
        same_session = [lnk for lnk in candidates if lnk.session == request_link.session]
        found = same_session or candidates
        return found[-1] if found else None

    def _settlement(self, dlv: Delivery) -> None:
        """The client's disposition of a delivery the broker sent."""
        token = self._outgoing.get(dlv)
        if token is None:  # a $cbs/$management answer, or a RECEIVE_AND_DELETE message
            if dlv.settled:
                dlv.settle()
            return
        state = dlv.remote_state
        if not state and not dlv.settled:
            return
        del self._outgoing[dlv]
        self.stats.settlements += 1
        try:
            self._apply(token, state, dlv.remote)
        except StoreError as exc:
            if not dlv.settled:
                self._finish(dlv, Disposition.REJECTED, (exc.condition, str(exc)))
            return
        if not dlv.settled and state:
            # 7.15 waits for the broker to settle with the outcome it asked for.
            if state == Disposition.MODIFIED:
                dlv.local.failed = dlv.remote.failed
                dlv.local.undeliverable = dlv.remote.undeliverable
            dlv.update(state)
        dlv.settle()

    def _apply(self, token: uuid.UUID, state: int, remote: Disposition) -> None:
        if state == Disposition.ACCEPTED:
            self.store.complete(token)
        elif state == Disposition.REJECTED:
            reason, description = _dead_letter_info(remote.condition)
            self.store.dead_letter(token, reason, description)
        elif state == Disposition.MODIFIED and remote.undeliverable:
            self.store.defer(token)
        elif state == Disposition.MODIFIED and remote.failed:
            self.store.abandon(token)
        elif self.store.holds(token):  # released, modified without failure, or settled bare
            self.store.release(token)


def _dead_letter_info(condition: Condition | None) -> tuple[str | None, str | None]:
    if condition is None:
        return None, None
    info = condition.info if isinstance(condition.info, dict) else {}
    reason = info.get("DeadLetterReason")
    description = info.get("DeadLetterErrorDescription")
    if condition.name != _DEAD_LETTER_CONDITION and reason is None:
        reason, description = condition.name, condition.description
    return (
        None if reason is None else str(reason),
        None if description is None else str(description),
    )
