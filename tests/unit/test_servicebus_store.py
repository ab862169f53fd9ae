"""The Service Bus broker's entities on a clock the test moves: locks, redelivery counts,
dead-lettering, topics, schedules, names. (The same behaviour over AMQP with the real SDK is in
tests/integration/test_servicebus_broker.py.)"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from spotguard.sim.servicebus_faults import Fault, FaultKind, FaultQueue
from spotguard.sim.servicebus_message import build_message
from spotguard.sim.servicebus_store import (
    EntityNotFound,
    LockLost,
    MessageNotFound,
    MessageState,
    NotAllowed,
    Store,
    normalize,
)


class Clock:
    def __init__(self) -> None:
        self.moment = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> Store:
    return Store(clock=clock, lock_duration=30, max_delivery_count=3)


def put(store: Store, entity: str, *texts: str) -> list[int]:
    target = store.send_target(entity)
    return [store.enqueue(target, build_message(t, message_id=t)) for t in texts]


def test_addresses_name_entities_case_insensitively() -> None:
    assert normalize("amqps://127.0.0.1:5672/Notices") == "notices"
    assert normalize("amqps://host/Topic/Subscriptions/Fleet/$DeadLetterQueue") == (
        "topic/subscriptions/fleet/$deadletterqueue"
    )
    assert normalize("Work/$management") == "work/$management"


def test_peek_lock_hands_out_the_lowest_sequence_number_once(store: Store) -> None:
    put(store, "q", "a", "b")
    entity = store.entity("q")
    first = store.acquire(entity)
    second = store.acquire(entity)
    assert first is not None
    assert second is not None
    assert [first.message.message_id, second.message.message_id] == ["a", "b"]
    assert store.acquire(entity) is None
    assert first.state is MessageState.LOCKED
    assert first.lock_token != second.lock_token
    assert first.lock_token is not None
    store.complete(first.lock_token)
    assert [m.message_id for m in entity.snapshot()] == ["b"]
    with pytest.raises(LockLost):
        store.complete(first.lock_token)


def test_lock_expiry_counts_a_delivery_and_the_last_one_dead_letters(
    store: Store, clock: Clock
) -> None:
    put(store, "q", "m")
    entity = store.entity("q")
    for attempt in range(3):
        got = store.acquire(entity)
        assert got is not None
        assert got.delivery_count == attempt
        clock.advance(29)
        store.tick()
        assert store.acquire(entity) is None  # still locked
        clock.advance(1)
        store.tick()  # expired
    assert entity.snapshot() == []
    [dead] = store.entity("q/$DeadLetterQueue").snapshot()
    assert dead.delivery_count == 3
    assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
    assert dead.dead_letter_source == "q"


def test_renew_extends_the_lock_from_now(store: Store, clock: Clock) -> None:
    put(store, "q", "m")
    got = store.acquire(store.entity("q"))
    assert got is not None
    assert got.lock_token is not None
    clock.advance(20)
    until = store.renew(got.lock_token)
    assert until == clock.now().timestamp() + 30
    clock.advance(20)
    store.tick()
    assert store.holds(got.lock_token)


def test_release_does_not_count_abandon_does_defer_sets_aside(store: Store) -> None:
    put(store, "q", "r", "a", "d")
    entity = store.entity("q")
    tokens = {}
    for _ in range(3):
        got = store.acquire(entity)
        assert got is not None
        assert got.lock_token is not None
        tokens[got.message.message_id] = got.lock_token
    store.release(tokens["r"])
    store.abandon(tokens["a"])
    store.defer(tokens["d"])
    by_id = {m.message_id: m for m in entity.snapshot()}
    assert (by_id["r"].state, by_id["r"].delivery_count) == (MessageState.AVAILABLE, 0)
    assert (by_id["a"].state, by_id["a"].delivery_count) == (MessageState.AVAILABLE, 1)
    assert by_id["d"].state is MessageState.DEFERRED
    again = [store.acquire(entity), store.acquire(entity), store.acquire(entity)]
    assert [g.message.message_id if g else None for g in again] == ["r", "a", None]


def test_dead_letter_keeps_reason_description_and_source(store: Store) -> None:
    put(store, "q", "m")
    got = store.acquire(store.entity("q"))
    assert got is not None
    assert got.lock_token is not None
    store.dead_letter(got.lock_token, "Bad", "very bad")
    [dead] = store.entity("Q/$deadletterqueue").snapshot()
    assert (dead.dead_letter_reason, dead.dead_letter_error_description) == ("Bad", "very bad")
    assert dead.sequence_number == got.sequence_number
    # A dead-letter queue has no dead-letter queue: abandoning there never moves it.
    dlq = store.entity("q/$deadletterqueue")
    for _ in range(5):
        again = store.acquire(dlq)
        assert again is not None
        assert again.lock_token is not None
        store.abandon(again.lock_token)
    assert len(dlq.snapshot()) == 1


def test_receive_and_delete_removes_the_message(store: Store) -> None:
    put(store, "q", "m")
    got = store.acquire(store.entity("q"), lock=False)
    assert got is not None
    assert got.lock_token is None
    assert store.entity("q").snapshot() == []


def test_a_topic_copies_each_message_into_every_subscription(store: Store) -> None:
    store.declare_topic("Notices", ["Fleet", "audit"])
    [seq] = put(store, "notices", "n")
    for sub in ("notices/subscriptions/fleet", "NOTICES/Subscriptions/Audit"):
        [copy] = store.entity(sub).snapshot()
        assert (copy.message_id, copy.sequence_number) == ("n", seq)
    fleet = store.entity("notices/subscriptions/fleet")
    got = store.acquire(fleet)
    assert got is not None
    assert got.lock_token is not None
    store.complete(got.lock_token)
    assert len(store.entity("notices/subscriptions/audit").snapshot()) == 1
    assert store.names() == [
        "notices",
        "notices/subscriptions/audit",
        "notices/subscriptions/fleet",
    ]


def test_a_topic_without_subscriptions_drops_messages(store: Store) -> None:
    store.declare_topic("lonely")
    put(store, "lonely", "gone")
    assert store.names() == ["lonely"]


def test_what_cannot_be_sent_to_or_received_from(store: Store) -> None:
    store.declare_topic("t", ["s"])
    with pytest.raises(NotAllowed):
        store.send_target("t/subscriptions/s")
    with pytest.raises(NotAllowed):
        store.send_target("q/$deadletterqueue")
    with pytest.raises(NotAllowed):
        store.entity("t")
    with pytest.raises(EntityNotFound):
        store.entity("t/subscriptions/nope")


def test_a_strict_store_creates_nothing_on_use(clock: Clock) -> None:
    strict = Store(clock=clock, auto_create=False)
    strict.declare_queue("known")
    assert strict.entity("KNOWN").name == "known"
    with pytest.raises(EntityNotFound):
        strict.entity("unknown")
    with pytest.raises(EntityNotFound):
        strict.send_target("unknown")
    strict.declare_topic("t", ["s"])
    known = ["known", "Known/$DeadLetterQueue", "t", "t/subscriptions/s/$deadletterqueue"]
    assert all(strict.knows(name) for name in known)
    assert not any(strict.knows(name) for name in ["unknown", "t/subscriptions/nope"])
    assert strict.names() == ["known", "t", "t/subscriptions/s"]


def test_scheduled_messages_appear_at_their_time_and_can_be_cancelled(
    store: Store, clock: Clock
) -> None:
    target = store.send_target("q")
    due = clock.now().timestamp() + 10
    keep = store.enqueue(target, build_message("keep"), scheduled_for=due)
    drop = store.enqueue(target, build_message("drop"), scheduled_for=due)
    store.cancel_scheduled(target, [drop])
    with pytest.raises(MessageNotFound):
        store.cancel_scheduled(target, [drop])
    assert [m.sequence_number for m in store.scheduled(target)] == [keep]
    store.tick()
    assert store.acquire(store.entity("q")) is None
    clock.advance(10)
    store.tick()
    got = store.acquire(store.entity("q"))
    assert got is not None
    assert got.sequence_number == keep
    assert store.scheduled(target) == []


def test_peek_sees_every_state_without_locking(store: Store) -> None:
    put(store, "q", "a", "b", "c")
    entity = store.entity("q")
    store.acquire(entity)
    peeked = store.peek(entity, from_sequence=2, count=5)
    assert [s.message.message_id for s in peeked] == ["b", "c"]
    assert [s.state for s in store.peek(entity, 0, 1)] == [MessageState.LOCKED]


def test_store_settings_are_checked(clock: Clock) -> None:
    with pytest.raises(ValueError, match="lock_duration"):
        Store(clock=clock, lock_duration=0)
    with pytest.raises(ValueError, match="max_delivery_count"):
        Store(clock=clock, max_delivery_count=0)


def test_faults_apply_by_count_or_time_and_entity(clock: Clock) -> None:
    faults = FaultQueue(now=lambda: clock.now().timestamp())
    faults.add(Fault.from_json({"kind": "reject_send", "count": 2, "entity": "Busy"}))
    faults.add(Fault(FaultKind.REFUSE, seconds=5))
    sends = frozenset({FaultKind.REJECT_SEND})
    assert faults.take(sends, "other") is None
    assert faults.take(sends, "busy") is not None
    assert faults.take(sends, "busy") is not None
    assert faults.take(sends, "busy") is None
    refuse = frozenset({FaultKind.REFUSE})
    assert faults.take(refuse) is not None
    assert faults.take(refuse) is not None
    clock.advance(5)
    assert faults.take(refuse) is None
    assert len(faults) == 0


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"kind": "nope"}, "nope"),
        ({}, "needs a kind"),
        ({"kind": "refuse", "colour": 1}, "unknown fault fields"),
        ({"kind": "refuse", "count": 0}, "count"),
        ({"kind": "refuse", "count": 1, "seconds": 1}, "not both"),
        ({"kind": "delay_send"}, "delay"),
        ({"kind": "reject_token", "status": 200}, "status"),
    ],
)
def test_bad_fault_specs_are_refused(spec: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Fault.from_json(spec)


def test_lock_tokens_are_random_uuids(store: Store) -> None:
    put(store, "q", *[str(i) for i in range(50)])
    entity = store.entity("q")
    tokens = set()
    while (got := store.acquire(entity)) is not None:
        assert isinstance(got.lock_token, uuid.UUID)
        tokens.add(got.lock_token)
    assert len(tokens) == 50
