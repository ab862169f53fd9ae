"""The local Service Bus broker's entities: queues, topics, subscriptions, dead-letter sub-queues.

In memory, single-threaded (the broker's reactor thread owns it), and knows nothing of AMQP links:

- a **queue** or a **subscription** (``<topic>/subscriptions/<name>``) holds messages by sequence
  number; each has a dead-letter sub-queue ``<entity>/$deadletterqueue``;
- a **topic** holds no messages: a message sent to it is copied into every subscription (none: it
  is dropped, as Service Bus does), with the topic's sequence number;
- **PEEK_LOCK**: ``acquire`` locks the lowest available message for the entity's lock duration
  under a new lock token. ``complete`` removes it; ``abandon`` (and lock expiry) makes it available
  again with ``delivery_count`` + 1, and moves it to the dead-letter sub-queue with reason
  ``MaxDeliveryCountExceeded`` once that count reaches the entity's MaxDeliveryCount; ``release``
  returns it without counting a delivery; ``dead_letter`` moves it with a reason and description;
  ``defer`` sets it aside (kept, never delivered again here). A lock outlives the link that took
  it, as on Azure: a message taken by a receiver that crashed comes back when the lock expires;
- **RECEIVE_AND_DELETE**: ``acquire(lock=False)`` removes the message as it is handed out;
- **scheduled** messages (``x-opt-scheduled-enqueue-time``, or the schedule operation) become
  available at their time; ``tick`` expires locks and enqueues them.

Names are case-insensitive (kept lower-case). Queues are created on first use unless the store is
strict; topics and subscriptions are always declared. ``delivery_count`` is the AMQP header's:
0 on the first delivery.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from spotguard.clock import Clock
from spotguard.sim.servicebus_message import (
    DEAD_LETTER_DESCRIPTION,
    DEAD_LETTER_REASON,
    Message,
)

DLQ_SUFFIX: Final = "/$deadletterqueue"
SUBSCRIPTIONS: Final = "/subscriptions/"
DEFAULT_LOCK_DURATION: Final = 60.0
DEFAULT_MAX_DELIVERY_COUNT: Final = 10
MAX_DELIVERY_COUNT_EXCEEDED: Final = "MaxDeliveryCountExceeded"


class StoreError(Exception):
    """A request the store refuses; ``condition`` is the AMQP error condition to answer with."""

    condition: str = "amqp:internal-error"


class EntityNotFound(StoreError):
    condition = "amqp:not-found"


class NotAllowed(StoreError):
    condition = "amqp:not-allowed"


class LockLost(StoreError):
    condition = "com.microsoft:message-lock-lost"


class MessageNotFound(StoreError):
    condition = "com.microsoft:message-not-found"


class MessageState(enum.StrEnum):
    AVAILABLE = "available"
    LOCKED = "locked"
    DEFERRED = "deferred"
    SCHEDULED = "scheduled"


def normalize(address: str) -> str:
    """An entity path from a link address: ``amqps://host:port/Queue`` -> ``queue``."""
    path = address.split("://", 1)[1].split("/", 1)[1] if "://" in address else address
    return path.strip("/").lower()


@dataclass(slots=True, eq=False)
class Stored:
    """A message in an entity, with what the broker knows about it."""

    sequence_number: int
    message: Message
    enqueued_at: float  # wall-clock seconds
    delivery_count: int = 0
    state: MessageState = MessageState.AVAILABLE
    lock_token: uuid.UUID | None = None
    locked_until: float | None = None
    dead_letter_source: str | None = None


@dataclass(frozen=True, slots=True)
class BrokerMessage:
    """A snapshot of a stored message, for tests and the inspection API."""

    entity: str
    sequence_number: int
    state: MessageState
    delivery_count: int
    enqueued_time: datetime
    locked_until: datetime | None
    scheduled_enqueue_time: datetime | None
    dead_letter_source: str | None
    message: Message

    @property
    def message_id(self) -> Any:
        return self.message.message_id

    @property
    def subject(self) -> Any:
        return self.message.prop("subject")

    @property
    def content_type(self) -> str | None:
        value = self.message.prop("content_type")
        return None if value is None else str(value)

    @property
    def application_properties(self) -> dict[Any, Any]:
        return dict(self.message.application_properties)

    @property
    def dead_letter_reason(self) -> Any:
        return self.message.application_properties.get(DEAD_LETTER_REASON)

    @property
    def dead_letter_error_description(self) -> Any:
        return self.message.application_properties.get(DEAD_LETTER_DESCRIPTION)

    @property
    def body(self) -> bytes | None:
        """The ``data`` body (None for a sequence or value body)."""
        return self.message.body_bytes()

    def json(self) -> Any:
        body = self.body
        if body is None:
            raise ValueError(f"message {self.sequence_number} has no data body")
        return json.loads(body)


def _when(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


@dataclass(slots=True, eq=False)
class Entity:
    """A queue, a subscription or a dead-letter sub-queue: messages by sequence number."""

    name: str
    lock_duration: float
    max_delivery_count: int | None  # None: never dead-lettered for it (a dead-letter queue)
    dead_letter: Entity | None = None
    messages: dict[int, Stored] = field(default_factory=dict)
    _available: list[int] = field(default_factory=list)  # heap of sequence numbers

    def make_available(self, stored: Stored) -> None:
        stored.state = MessageState.AVAILABLE
        stored.lock_token = None
        stored.locked_until = None
        self.messages[stored.sequence_number] = stored
        heapq.heappush(self._available, stored.sequence_number)

    def pop_available(self) -> Stored | None:
        while self._available:
            seq = heapq.heappop(self._available)
            stored = self.messages.get(seq)
            if stored is not None and stored.state is MessageState.AVAILABLE:
                return stored
        return None

    def has_available(self) -> bool:
        while self._available:
            stored = self.messages.get(self._available[0])
            if stored is not None and stored.state is MessageState.AVAILABLE:
                return True
            heapq.heappop(self._available)
        return False

    def snapshot(self) -> list[BrokerMessage]:
        return [
            BrokerMessage(
                entity=self.name,
                sequence_number=s.sequence_number,
                state=s.state,
                delivery_count=s.delivery_count,
                enqueued_time=datetime.fromtimestamp(s.enqueued_at, UTC),
                locked_until=_when(s.locked_until),
                scheduled_enqueue_time=None,
                dead_letter_source=s.dead_letter_source,
                message=s.message,
            )
            for s in sorted(self.messages.values(), key=lambda s: s.sequence_number)
        ]


@dataclass(slots=True, eq=False)
class Topic:
    name: str
    subscriptions: dict[str, Entity] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Scheduled:
    """A message waiting for its enqueue time, at the entity or topic it was sent to."""

    target: Entity | Topic
    message: Message
    sequence_number: int
    due: float


class Store:
    """Every entity of one broker, and every lock (by token)."""

    def __init__(
        self,
        *,
        clock: Clock,
        lock_duration: float = DEFAULT_LOCK_DURATION,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        auto_create: bool = True,
        on_available: Callable[[Entity], None] = lambda entity: None,
    ) -> None:
        if lock_duration <= 0 or max_delivery_count < 1:
            raise ValueError("lock_duration must be positive and max_delivery_count at least 1")
        self._clock = clock
        self.lock_duration = lock_duration
        self.max_delivery_count = max_delivery_count
        self.auto_create = auto_create
        self.on_available = on_available
        self._queues: dict[str, Entity] = {}
        self._topics: dict[str, Topic] = {}
        self._locks: dict[uuid.UUID, tuple[Entity, Stored]] = {}
        self._scheduled: dict[int, _Scheduled] = {}
        self._sequence = itertools.count(1)

    def now(self) -> float:
        return self._clock.now().timestamp()

    # --- entities ----------------------------------------------------------------------------

    def _new_entity(
        self, name: str, lock_duration: float | None, max_delivery_count: int | None
    ) -> Entity:
        dlq = Entity(name + DLQ_SUFFIX, lock_duration or self.lock_duration, None)
        return Entity(
            name,
            lock_duration or self.lock_duration,
            max_delivery_count or self.max_delivery_count,
            dead_letter=dlq,
        )

    def declare_queue(
        self,
        name: str,
        *,
        lock_duration: float | None = None,
        max_delivery_count: int | None = None,
    ) -> Entity:
        """The queue ``name``, created with these settings if it does not exist."""
        key = normalize(name)
        if key in self._topics or SUBSCRIPTIONS in key or key.endswith(DLQ_SUFFIX):
            raise NotAllowed(f"{name!r} cannot be a queue")
        if key not in self._queues:
            self._queues[key] = self._new_entity(key, lock_duration, max_delivery_count)
        return self._queues[key]

    def declare_topic(self, name: str, subscriptions: Iterable[str] = ()) -> Topic:
        key = normalize(name)
        if key in self._queues or "/" in key:
            raise NotAllowed(f"{name!r} cannot be a topic")
        topic = self._topics.setdefault(key, Topic(key))
        for sub in subscriptions:
            self.declare_subscription(key, sub)
        return topic

    def declare_subscription(
        self,
        topic: str,
        name: str,
        *,
        lock_duration: float | None = None,
        max_delivery_count: int | None = None,
    ) -> Entity:
        owner = self.declare_topic(topic)
        sub = name.lower()
        if not sub or "/" in sub:
            raise NotAllowed(f"{name!r} is not a subscription name")
        if sub not in owner.subscriptions:
            path = f"{owner.name}{SUBSCRIPTIONS}{sub}"
            owner.subscriptions[sub] = self._new_entity(path, lock_duration, max_delivery_count)
        return owner.subscriptions[sub]

    def entity(self, address: str) -> Entity:
        """The queue, subscription or dead-letter sub-queue to receive from (or inspect)."""
        key = normalize(address)
        dead = key.endswith(DLQ_SUFFIX)
        base = key.removesuffix(DLQ_SUFFIX) if dead else key
        if SUBSCRIPTIONS in base:
            topic_name, sub = base.split(SUBSCRIPTIONS, 1)
            topic = self._topics.get(topic_name)
            found = topic.subscriptions.get(sub) if topic else None
            if found is None:
                raise EntityNotFound(f"no subscription {base!r}")
        elif base in self._topics:
            raise NotAllowed(f"{base!r} is a topic: receive from one of its subscriptions")
        elif base in self._queues:
            found = self._queues[base]
        elif self.auto_create and base and "/" not in base:
            found = self.declare_queue(base)
        else:
            raise EntityNotFound(f"no queue {base!r}")
        if dead:
            assert found.dead_letter is not None
            return found.dead_letter
        return found

    def send_target(self, address: str) -> Entity | Topic:
        """The queue or topic a sender sends to."""
        key = normalize(address)
        if key in self._topics:
            return self._topics[key]
        if SUBSCRIPTIONS in key or key.endswith(DLQ_SUFFIX):
            raise NotAllowed(f"cannot send to {key!r}")
        return self.entity(key)

    def knows(self, address: str) -> bool:
        """Whether ``address`` names an entity (or would be created on first use)."""
        if self.auto_create:
            return True
        key = normalize(address)
        try:
            if key in self._topics or key.removesuffix(DLQ_SUFFIX) in self._queues:
                return True
            self.entity(key)
        except EntityNotFound:
            return False
        except NotAllowed:
            return True
        return True

    def names(self) -> list[str]:
        """Every queue, topic and subscription (dead-letter sub-queues implied)."""
        subs = [s.name for t in self._topics.values() for s in t.subscriptions.values()]
        return sorted([*self._queues, *self._topics, *subs])

    # --- sending ------------------------------------------------------------------------------

    def enqueue(
        self, target: Entity | Topic, message: Message, *, scheduled_for: float | None = None
    ) -> int:
        """Store ``message`` (now, or at ``scheduled_for``); its sequence number."""
        seq = next(self._sequence)
        if scheduled_for is not None and scheduled_for > self.now():
            self._scheduled[seq] = _Scheduled(target, message, seq, scheduled_for)
            return seq
        self._deliver_to(target, message, seq)
        return seq

    def _deliver_to(self, target: Entity | Topic, message: Message, seq: int) -> None:
        entities = list(target.subscriptions.values()) if isinstance(target, Topic) else [target]
        now = self.now()
        for entity in entities:
            entity.make_available(Stored(seq, message, now))
            self.on_available(entity)

    def cancel_scheduled(self, target: Entity | Topic, sequence_numbers: Iterable[int]) -> None:
        for seq in sequence_numbers:
            pending = self._scheduled.get(seq)
            if pending is None or pending.target is not target:
                raise MessageNotFound(f"no scheduled message {seq} in {target.name!r}")
            del self._scheduled[seq]

    # --- receiving ----------------------------------------------------------------------------

    def acquire(self, entity: Entity, *, lock: bool = True) -> Stored | None:
        """The next available message: locked under a new token, or (``lock=False``) removed."""
        stored = entity.pop_available()
        if stored is None:
            return None
        if not lock:
            del entity.messages[stored.sequence_number]
            return stored
        stored.state = MessageState.LOCKED
        stored.lock_token = uuid.uuid4()
        stored.locked_until = self.now() + entity.lock_duration
        self._locks[stored.lock_token] = (entity, stored)
        return stored

    def _locked(self, token: uuid.UUID) -> tuple[Entity, Stored]:
        held = self._locks.get(token)
        if held is None:
            raise LockLost(f"lock {token} is not held (expired, settled or never given)")
        return held

    def holds(self, token: uuid.UUID) -> bool:
        return token in self._locks

    def complete(self, token: uuid.UUID) -> None:
        entity, stored = self._locked(token)
        del self._locks[token]
        del entity.messages[stored.sequence_number]

    def abandon(self, token: uuid.UUID) -> None:
        """Back to available with one more delivery counted (or dead-lettered at the maximum)."""
        entity, stored = self._locked(token)
        del self._locks[token]
        self._count_failed_delivery(entity, stored)

    def release(self, token: uuid.UUID) -> None:
        """Back to available; the delivery is not counted (AMQP ``released``)."""
        entity, stored = self._locked(token)
        del self._locks[token]
        entity.make_available(stored)
        self.on_available(entity)

    def defer(self, token: uuid.UUID) -> None:
        _, stored = self._locked(token)
        del self._locks[token]
        stored.state = MessageState.DEFERRED
        stored.lock_token = None
        stored.locked_until = None

    def dead_letter(self, token: uuid.UUID, reason: str | None, description: str | None) -> None:
        entity, stored = self._locked(token)
        del self._locks[token]
        self._move_to_dead_letter(entity, stored, reason, description)

    def renew(self, token: uuid.UUID) -> float:
        """A fresh lock duration from now; the new locked-until (wall-clock seconds)."""
        entity, stored = self._locked(token)
        stored.locked_until = self.now() + entity.lock_duration
        return stored.locked_until

    def _count_failed_delivery(self, entity: Entity, stored: Stored) -> None:
        stored.delivery_count += 1
        limit = entity.max_delivery_count
        if limit is not None and stored.delivery_count >= limit:
            self._move_to_dead_letter(
                entity,
                stored,
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"Message could not be consumed after {limit} delivery attempts.",
            )
            return
        entity.make_available(stored)
        self.on_available(entity)

    def _move_to_dead_letter(
        self, entity: Entity, stored: Stored, reason: str | None, description: str | None
    ) -> None:
        del entity.messages[stored.sequence_number]
        dlq = entity.dead_letter
        if dlq is None:  # already a dead-letter queue: Service Bus keeps the message there
            entity.make_available(stored)
            self.on_available(entity)
            return
        extra = {DEAD_LETTER_REASON: reason or "", DEAD_LETTER_DESCRIPTION: description or ""}
        moved = Stored(
            stored.sequence_number,
            stored.message.with_application_properties(extra),
            stored.enqueued_at,
            delivery_count=stored.delivery_count,
            dead_letter_source=entity.name,
        )
        dlq.make_available(moved)
        self.on_available(dlq)

    # --- time ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Expire locks (a failed delivery each) and enqueue scheduled messages that are due."""
        now = self.now()
        for token, (entity, stored) in list(self._locks.items()):
            if stored.locked_until is not None and stored.locked_until <= now:
                del self._locks[token]
                self._count_failed_delivery(entity, stored)
        for seq, pending in sorted(self._scheduled.items()):
            if pending.due <= now:
                del self._scheduled[seq]
                self._deliver_to(pending.target, pending.message, seq)

    # --- inspection ---------------------------------------------------------------------------

    def peek(self, entity: Entity, from_sequence: int, count: int) -> list[Stored]:
        """Up to ``count`` messages from ``from_sequence`` on, in any state, without locking."""
        ordered = sorted(entity.messages.items())
        return [s for seq, s in ordered if seq >= from_sequence][:count]

    def scheduled(self, target: Entity | Topic) -> list[BrokerMessage]:
        return [
            BrokerMessage(
                entity=target.name,
                sequence_number=p.sequence_number,
                state=MessageState.SCHEDULED,
                delivery_count=0,
                enqueued_time=datetime.fromtimestamp(p.due, UTC),
                locked_until=None,
                scheduled_enqueue_time=datetime.fromtimestamp(p.due, UTC),
                dead_letter_source=None,
                message=p.message,
            )
            for p in sorted(self._scheduled.values(), key=lambda p: p.sequence_number)
            if p.target is target
        ]
