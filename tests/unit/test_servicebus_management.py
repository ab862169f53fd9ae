"""``$cbs`` and ``$management`` requests of the Service Bus broker, answered from a store: the
status codes and bodies the SDK expects (see servicebus_management)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from spotguard.sim.servicebus_codec import Array, Timestamp
from spotguard.sim.servicebus_faults import Fault, FaultKind
from spotguard.sim.servicebus_management import cbs_reply, management_reply
from spotguard.sim.servicebus_message import (
    SCHEDULED_ENQUEUE_TIME,
    Message,
    build_message,
    parse_message,
    value_message,
)
from spotguard.sim.servicebus_store import Entity, Store, Topic


class Clock:
    def now(self) -> datetime:
        return datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


@pytest.fixture
def store() -> Store:
    return Store(clock=Clock(), lock_duration=30)


def request(operation: str, body: Any) -> Message:
    request_id = uuid.uuid4()
    return Message(
        properties=(request_id,),
        application_properties={"operation": operation},
        body=value_message(body).body,
    )


def ask(store: Store, target: Entity | Topic, operation: str, body: Any) -> tuple[int, Any]:
    question = request(f"com.microsoft:{operation}", body)
    answer = parse_message(management_reply(store, lambda: target, question).encode())
    assert answer.prop("correlation_id") == question.message_id
    return int(answer.application_properties["statusCode"]), answer.body_value()


def locked(store: Store, entity: Entity, count: int) -> list[uuid.UUID]:
    tokens = []
    for _ in range(count):
        got = store.acquire(entity)
        assert got is not None
        assert got.lock_token is not None
        tokens.append(got.lock_token)
    return tokens


def test_put_token_is_accepted_unless_a_fault_rejects_it() -> None:
    put = request("put-token", "SharedAccessSignature sr=...")
    put = Message(
        properties=put.properties,
        application_properties={"operation": "put-token", "type": "jwt", "name": "sb://h/q"},
        body=put.body,
    )
    ok = parse_message(cbs_reply(put, None).encode())
    assert ok.application_properties["status-code"] == 202
    assert ok.prop("correlation_id") == put.message_id
    denied = parse_message(cbs_reply(put, Fault(FaultKind.REJECT_TOKEN, status=401)).encode())
    assert denied.application_properties["status-code"] == 401
    unknown = parse_message(cbs_reply(put, None, known=False).encode())
    assert unknown.application_properties["status-code"] == 404
    assert unknown.application_properties["status-description"] == (
        "The messaging entity 'sb://h/q' could not be found."
    )


def test_update_disposition_settles_by_lock_token(store: Store) -> None:
    target = store.send_target("q")
    for text in ("done", "again", "dead"):
        store.enqueue(target, build_message(text, message_id=text))
    entity = store.entity("q")
    done, again, dead = locked(store, entity, 3)
    assert ask(store, entity, "update-disposition", {
        "disposition-status": "completed", "lock-tokens": Array(0x98, [done]),
    }) == (200, {})  # fmt: skip
    assert ask(store, entity, "update-disposition", {
        "disposition-status": "abandoned", "lock-tokens": Array(0x98, [again]),
    })[0] == 200  # fmt: skip
    assert ask(store, entity, "update-disposition", {
        "disposition-status": "suspended", "lock-tokens": Array(0x98, [dead]),
        "deadletter-reason": "Why", "deadletter-description": "Because",
    })[0] == 200  # fmt: skip
    assert [(m.message_id, m.delivery_count) for m in entity.snapshot()] == [("again", 1)]
    [moved] = store.entity("q/$deadletterqueue").snapshot()
    assert (moved.dead_letter_reason, moved.dead_letter_error_description) == ("Why", "Because")
    status, _ = ask(store, entity, "update-disposition", {
        "disposition-status": "completed", "lock-tokens": Array(0x98, [done]),
    })  # fmt: skip
    assert status == 410


def test_renew_lock_answers_the_new_expirations(store: Store) -> None:
    store.enqueue(store.send_target("q"), build_message("m"))
    entity = store.entity("q")
    [token] = locked(store, entity, 1)
    status, body = ask(store, entity, "renew-lock", {"lock-tokens": Array(0x98, [token])})
    assert status == 200
    expected = Timestamp(round((Clock().now().timestamp() + 30) * 1000))
    assert body["expirations"].items == [expected]


def test_peek_answers_encoded_messages_or_204(store: Store) -> None:
    entity = store.entity("q")
    peek = {"from-sequence-number": 0, "message-count": 5}
    assert ask(store, entity, "peek-message", peek) == (204, {})
    store.enqueue(store.send_target("q"), build_message("m", message_id="p"))
    status, body = ask(store, entity, "peek-message", peek)
    assert status == 200
    [peeked] = [parse_message(m["message"]) for m in body["messages"]]
    assert peeked.message_id == "p"
    assert peeked.annotation("x-opt-message-state") == 0
    assert peeked.annotation("x-opt-locked-until") is None


def test_schedule_and_cancel(store: Store) -> None:
    target = store.send_target("q")
    due = Timestamp(round(Clock().now().timestamp() * 1000) + 60_000)
    scheduled = build_message("later", message_annotations={SCHEDULED_ENQUEUE_TIME: due})
    status, body = ask(store, target, "schedule-message", {
        "messages": [{"message-id": "x", "message": scheduled.encode()}],
    })  # fmt: skip
    assert status == 200
    [seq] = body["sequence-numbers"].items
    assert [m.sequence_number for m in store.scheduled(target)] == [seq]
    assert ask(store, target, "cancel-scheduled-message", {
        "sequence-numbers": Array(0x81, [seq]),
    }) == (200, {})  # fmt: skip
    assert store.scheduled(target) == []
    assert ask(store, target, "cancel-scheduled-message", {
        "sequence-numbers": Array(0x81, [seq]),
    })[0] == 404  # fmt: skip


def test_unmodelled_and_malformed_requests_get_error_statuses(store: Store) -> None:
    entity = store.entity("q")
    assert ask(store, entity, "receive-by-sequence-number", {})[0] == 501
    assert ask(store, entity, "get-session-state", {})[0] == 501
    assert ask(store, entity, "renew-lock", "not a map")[0] == 400
    assert ask(store, entity, "renew-lock", {"lock-tokens": 5})[0] == 400
    assert ask(store, entity, "renew-lock", {})[0] == 400
    peek = {"from-sequence-number": 0, "message-count": 1}
    assert ask(store, store.declare_topic("t"), "peek-message", peek)[0] == 400  # no messages
