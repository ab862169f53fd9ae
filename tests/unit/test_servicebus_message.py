"""Messages as the Service Bus broker stores them, checked against proton's own message codec (an
independent AMQP implementation): sections, the untouched body, batch envelopes, redelivery."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proton import Message as ProtonMessage
from proton import symbol

from spotguard.sim.servicebus_codec import DecodeError, Described, Symbol, UInt, ULong, encode
from spotguard.sim.servicebus_message import (
    DATA,
    LOCKED_UNTIL,
    SEQUENCE_NUMBER,
    build_message,
    parse_message,
    split_batch,
    timestamp_ms,
    value_message,
)


def proton_bytes(**fields: Any) -> bytes:
    """proton's encoding; a ``bytes`` body goes in a ``data`` section, as the SDK sends it."""
    message = ProtonMessage(**fields)
    message.inferred = isinstance(fields.get("body"), bytes)
    return bytes(message.encode())


def proton_decode(raw: bytes) -> ProtonMessage:
    message = ProtonMessage()
    message.decode(raw)
    return message


def test_sections_of_a_message_proton_encoded() -> None:
    raw = proton_bytes(
        id="m-1",
        subject="notice",
        content_type="application/json",
        correlation_id="EV-1",
        properties={"kind": "preempt", "attempt": 2},
        annotations={symbol("x-opt-partition-key"): "p"},
        body=b'{"a": 1}',
        ttl=30.0,
        durable=True,
    )
    message = parse_message(raw)
    assert message.message_id == "m-1"
    assert message.prop("subject") == "notice"
    assert message.prop("content_type") == "application/json"
    assert message.prop("correlation_id") == "EV-1"
    assert dict(message.application_properties) == {"kind": "preempt", "attempt": 2}
    assert message.annotation("x-opt-partition-key") == "p"
    assert message.time_to_live_ms == 30_000
    assert message.body_bytes() == b'{"a": 1}'
    # Re-encoded, proton reads the same message.
    back = proton_decode(message.encode())
    assert (back.id, back.subject, back.body, back.properties) == (
        "m-1",
        "notice",
        b'{"a": 1}',
        {"kind": "preempt", "attempt": 2},
    )


@pytest.mark.parametrize(
    "body", [b"\x00\x01 bytes", "a string value", {"a": [1, 2]}, None, 42], ids=repr
)
def test_the_body_passes_through_byte_for_byte(body: Any) -> None:
    raw = proton_bytes(body=body, id="b")
    message = parse_message(raw)
    redelivered = message.for_delivery(delivery_count=3, annotations={SEQUENCE_NUMBER: 7})
    assert redelivered.body == message.body
    assert proton_decode(redelivered.encode()).body == proton_decode(raw).body


def test_for_delivery_sets_the_count_and_the_brokers_annotations_only() -> None:
    raw = proton_bytes(
        id="d",
        body="x",
        annotations={symbol("x-opt-keep"): 1, symbol("x-opt-sequence-number"): 999},
        instructions={symbol("per-hop"): True},  # delivery annotations
    )
    delivered = parse_message(raw).for_delivery(
        delivery_count=2,
        annotations={SEQUENCE_NUMBER: 5, LOCKED_UNTIL: timestamp_ms(1_800_000_000.5)},
    )
    back = proton_decode(delivered.encode())
    assert back.delivery_count == 2
    assert back.annotations == {
        "x-opt-keep": 1,
        "x-opt-sequence-number": 5,
        "x-opt-locked-until": 1_800_000_000_500,
    }
    assert not back.instructions
    assert delivered.header[4] == UInt(2)


def _envelope(*inner: bytes, message_id: str | None = "first") -> bytes:
    """A batch as the SDK sends it: data sections that each hold a whole encoded message."""
    props = encode(Described(ULong(0x73), [message_id])) if message_id else b""
    return props + b"".join(encode(Described(ULong(DATA), m)) for m in inner)


def test_a_batch_envelope_splits_into_its_messages() -> None:
    inner = [proton_bytes(id=f"m{i}", body=f"body {i}".encode()) for i in range(3)]
    batch = split_batch(parse_message(_envelope(*inner)))
    assert batch is not None
    assert [m.message_id for m in batch] == ["m0", "m1", "m2"]
    assert [m.body_bytes() for m in batch] == [b"body 0", b"body 1", b"body 2"]


@pytest.mark.parametrize(
    "raw",
    [
        proton_bytes(id="plain", body=b"just bytes"),
        proton_bytes(id="value", body="a value"),
        # a data body that is an encoded message, but with application properties: a message
        proton_bytes(id="app", body=proton_bytes(body=b"inner"), properties={"k": "v"}),
        # a data body whose payload is an encoded value, not a message
        _envelope(encode("not a message")),
        # a message without a body inside
        _envelope(encode(Described(ULong(0x73), ["no body"]))),
    ],
    ids=["data", "value", "app-properties", "not-a-message", "no-inner-body"],
)
def test_anything_else_is_not_a_batch(raw: bytes) -> None:
    assert split_batch(parse_message(raw)) is None


def test_build_message_sends_dicts_as_json() -> None:
    message = build_message(
        {"eventType": "x"},
        message_id="e-1",
        application_properties={"aeg-event-type": "Notification"},
    )
    back = proton_decode(message.encode())
    assert back.body == b'{"eventType":"x"}'
    assert back.content_type == "application/json"
    assert back.id == "e-1"
    assert back.properties == {"aeg-event-type": "Notification"}


def test_value_messages_carry_the_correlation_id() -> None:
    request_id = uuid.uuid4()
    back = proton_decode(
        value_message({"k": 1}, correlation_id=request_id, application_properties={"s": 1}).encode()
    )
    assert back.correlation_id == request_id
    assert back.body == {"k": 1}
    assert back.properties == {"s": 1}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (encode("a bare value"), "not a message section"),
        (encode(Described(Symbol("nope"), 1)), "unknown section"),
        (encode(Described(ULong(0x77), 1)) * 2, "a body is one value"),
        (encode(Described(ULong(0x75), "text")), "data section holds binary"),
        (encode(Described(ULong(0x74), [1])), "must hold a dict"),
        (encode(Described(ULong(0x70), [])) * 2, "repeated or out of order"),
    ],
)
def test_malformed_messages_are_decode_errors(raw: bytes, problem: str) -> None:
    with pytest.raises(DecodeError, match=problem):
        parse_message(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_any_bytes_parse_or_raise_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        message = parse_message(raw)
        split_batch(message)
