"""AMQP messages as the local Service Bus broker stores them: sections, batches, requests.

A transfer's payload is a run of described sections (header, annotations, properties,
application-properties, body, footer). ``parse_message`` splits it; the body stays encoded, byte
for byte, so whatever a client sent (``data``, ``amqp-sequence`` or ``amqp-value``) is what a
receiver gets. On every delivery the broker re-encodes only the header (``delivery-count``) and
the message annotations (``x-opt-*``), as Service Bus does.

The SDK sends a list or a ``ServiceBusMessageBatch`` as one transfer of message-format
0x80013700: an envelope whose ``data`` sections each hold one complete encoded message.
proton-python does not expose a transfer's message-format, so ``split_batch`` recognises the
envelope by its shape.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from spotguard.sim.servicebus_codec import (
    DecodeError,
    Described,
    Symbol,
    Timestamp,
    UInt,
    ULong,
    decode_value,
    encode,
)

HEADER: Final = 0x70
DELIVERY_ANNOTATIONS: Final = 0x71
MESSAGE_ANNOTATIONS: Final = 0x72
PROPERTIES: Final = 0x73
APPLICATION_PROPERTIES: Final = 0x74
DATA: Final = 0x75
SEQUENCE: Final = 0x76
VALUE: Final = 0x77
FOOTER: Final = 0x78
BODY_SECTIONS: Final = frozenset({DATA, SEQUENCE, VALUE})
_SYMBOLIC: Final = {
    "amqp:header:list": HEADER,
    "amqp:delivery-annotations:map": DELIVERY_ANNOTATIONS,
    "amqp:message-annotations:map": MESSAGE_ANNOTATIONS,
    "amqp:properties:list": PROPERTIES,
    "amqp:application-properties:map": APPLICATION_PROPERTIES,
    "amqp:data:binary": DATA,
    "amqp:amqp-sequence:list": SEQUENCE,
    "amqp:amqp-value:*": VALUE,
    "amqp:footer:map": FOOTER,
}
_MAP_SECTIONS: Final = (DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS, APPLICATION_PROPERTIES, FOOTER)

#: The fields of the properties section, in wire order.
PROPERTY_FIELDS: Final = (
    "message_id", "user_id", "to", "subject", "reply_to", "correlation_id", "content_type",
    "content_encoding", "absolute_expiry_time", "creation_time", "group_id", "group_sequence",
    "reply_to_group_id",
)  # fmt: skip
_HEADER_FIELDS: Final = 5  # durable, priority, ttl, first-acquirer, delivery-count

# Service Bus annotations and properties the broker sets.
SEQUENCE_NUMBER: Final = Symbol("x-opt-sequence-number")
ENQUEUED_TIME: Final = Symbol("x-opt-enqueued-time")
LOCKED_UNTIL: Final = Symbol("x-opt-locked-until")
DEADLETTER_SOURCE: Final = Symbol("x-opt-deadletter-source")
SCHEDULED_ENQUEUE_TIME: Final = Symbol("x-opt-scheduled-enqueue-time")
MESSAGE_STATE: Final = Symbol("x-opt-message-state")
DEAD_LETTER_REASON: Final = "DeadLetterReason"
DEAD_LETTER_DESCRIPTION: Final = "DeadLetterErrorDescription"


def section_code(descriptor: Any) -> int | None:
    """The section a descriptor names (numeric or symbolic), or None."""
    if isinstance(descriptor, Symbol):
        return _SYMBOLIC.get(descriptor)
    if isinstance(descriptor, int) and not isinstance(descriptor, bool):
        return int(descriptor) if HEADER <= descriptor <= FOOTER else None
    return None


@dataclass(frozen=True, slots=True)
class Message:
    """One AMQP message: the decoded non-body sections and the encoded body."""

    header: tuple[Any, ...] = ()
    delivery_annotations: Mapping[Any, Any] = field(default_factory=dict)
    message_annotations: Mapping[Any, Any] = field(default_factory=dict)
    properties: tuple[Any, ...] = ()
    application_properties: Mapping[Any, Any] = field(default_factory=dict)
    body: bytes = b""
    footer: Mapping[Any, Any] = field(default_factory=dict)

    def prop(self, name: str) -> Any:
        """A field of the properties section by name (``message_id``, ``subject``...)."""
        index = PROPERTY_FIELDS.index(name)
        return self.properties[index] if index < len(self.properties) else None

    @property
    def message_id(self) -> Any:
        return self.prop("message_id")

    @property
    def time_to_live_ms(self) -> int | None:
        ttl = self.header[2] if len(self.header) > 2 else None
        return None if ttl is None else int(ttl)

    def annotation(self, key: str) -> Any:
        return self.message_annotations.get(Symbol(key))

    def body_sections(self) -> list[tuple[int, Any]]:
        """The decoded body: ``(section code, value)`` per section."""
        out: list[tuple[int, Any]] = []
        pos = 0
        while pos < len(self.body):
            section, pos = decode_value(self.body, pos)
            assert isinstance(section, Described)
            code = section_code(section.descriptor)
            assert code is not None
            out.append((code, section.value))
        return out

    def body_bytes(self) -> bytes | None:
        """The concatenated ``data`` sections, or None for a sequence or value body."""
        sections = self.body_sections()
        if not sections or any(code != DATA for code, _ in sections):
            return None
        return b"".join(bytes(value) for _, value in sections)

    def body_value(self) -> Any:
        """The body in Python: bytes (data), a list of lists (sequence) or the value."""
        sections = self.body_sections()
        if sections and all(code == DATA for code, _ in sections):
            return b"".join(bytes(value) for _, value in sections)
        if sections and sections[0][0] == SEQUENCE:
            return [value for _, value in sections]
        return sections[0][1] if sections else None

    def encode(self) -> bytes:
        parts: list[bytes] = []

        def section(code: int, value: Any) -> None:
            parts.append(encode(Described(ULong(code), value)))

        if self.header:
            section(HEADER, list(self.header))
        if self.delivery_annotations:
            section(DELIVERY_ANNOTATIONS, dict(self.delivery_annotations))
        if self.message_annotations:
            section(MESSAGE_ANNOTATIONS, dict(self.message_annotations))
        if self.properties:
            section(PROPERTIES, list(self.properties))
        if self.application_properties:
            section(APPLICATION_PROPERTIES, dict(self.application_properties))
        parts.append(self.body)
        if self.footer:
            section(FOOTER, dict(self.footer))
        return b"".join(parts)

    def for_delivery(self, *, delivery_count: int, annotations: Mapping[Any, Any]) -> Message:
        """This message as a receiver gets it: ``delivery-count`` set in the header, the broker's
        annotations over the sender's, no delivery annotations (they are per hop)."""
        header = list(self.header) + [None] * (_HEADER_FIELDS - len(self.header))
        header[4] = UInt(delivery_count)
        return dataclasses.replace(
            self,
            header=tuple(header),
            delivery_annotations={},
            message_annotations={**self.message_annotations, **annotations},
        )

    def with_application_properties(self, extra: Mapping[str, Any]) -> Message:
        return dataclasses.replace(
            self, application_properties={**self.application_properties, **extra}
        )

    def describe(self) -> dict[str, Any]:
        """JSON-friendly view of the sender's fields (the inspection API's ``message``)."""
        props = {
            name: _plain(self.prop(name)) for name in PROPERTY_FIELDS if self.prop(name) is not None
        }
        return {
            "properties": props,
            "application_properties": {
                str(k): _plain(v) for k, v in self.application_properties.items()
            },
            "message_annotations": {str(k): _plain(v) for k, v in self.message_annotations.items()},
            "body": _plain(self.body_value()),
        }


def _plain(value: Any) -> Any:
    """Bytes as text where they are UTF-8, UUIDs as strings, containers recursively."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Described):
        return {"descriptor": _plain(value.descriptor), "value": _plain(value.value)}
    return value if value is None or isinstance(value, str | int | float | bool) else repr(value)


def parse_message(raw: bytes | memoryview) -> Message:
    """Split an encoded message into its sections; DecodeError if it is not one."""
    fields: dict[int, Any] = {}
    body: list[bytes] = []
    body_kind: int | None = None
    pos = 0
    while pos < len(raw):
        start = pos
        section, pos = decode_value(raw, pos)
        if not isinstance(section, Described):
            raise DecodeError(f"not a message section at byte {start}")
        code = section_code(section.descriptor)
        if code is None:
            raise DecodeError(f"unknown section descriptor {section.descriptor!r}")
        if code in BODY_SECTIONS:
            if body_kind is not None and (code != body_kind or code == VALUE):
                raise DecodeError("a body is one value, or data sections, or sequences")
            body_kind = code
            if code == DATA and not isinstance(section.value, bytes):
                raise DecodeError("a data section holds binary")
            if code == SEQUENCE and not isinstance(section.value, list):
                raise DecodeError("an amqp-sequence section holds a list")
            body.append(bytes(raw[start:pos]))
            continue
        if code in fields or (body and code != FOOTER):
            raise DecodeError(f"section 0x{code:02x} repeated or out of order")
        expected = dict if code in _MAP_SECTIONS else list
        value = section.value
        if not isinstance(value, expected):
            raise DecodeError(f"section 0x{code:02x} must hold a {expected.__name__}")
        fields[code] = value
    return Message(
        header=tuple(fields.get(HEADER, ())),
        delivery_annotations=fields.get(DELIVERY_ANNOTATIONS, {}),
        message_annotations=fields.get(MESSAGE_ANNOTATIONS, {}),
        properties=tuple(fields.get(PROPERTIES, ())),
        application_properties=fields.get(APPLICATION_PROPERTIES, {}),
        body=b"".join(body),
        footer=fields.get(FOOTER, {}),
    )


def split_batch(message: Message) -> list[Message] | None:
    """The messages of a batch envelope (message-format 0x80013700), or None if ``message`` is
    not one: its body must be data sections only, each a complete encoded message with a body,
    and it carries no application properties."""
    if message.application_properties or not message.body:
        return None
    try:
        sections = message.body_sections()
    except DecodeError:
        return None
    if any(code != DATA for code, _ in sections):
        return None
    inner: list[Message] = []
    for _, payload in sections:
        if not payload or payload[0] != 0x00:
            return None
        try:
            parsed = parse_message(payload)
        except (DecodeError, IndexError):
            return None
        if not parsed.body:
            return None
        inner.append(parsed)
    return inner


def build_message(
    body: bytes | str | Any,
    *,
    message_id: str | None = None,
    subject: str | None = None,
    content_type: str | None = None,
    correlation_id: str | None = None,
    application_properties: Mapping[str, Any] | None = None,
    message_annotations: Mapping[Any, Any] | None = None,
    time_to_live_ms: int | None = None,
) -> Message:
    """A message as a client would send it: ``bytes`` or ``str`` go in one ``data`` section
    (``str`` as UTF-8), a ``dict`` or ``list`` as JSON (content type ``application/json``)."""
    if isinstance(body, dict | list):
        body = json.dumps(body, separators=(",", ":"))
        content_type = content_type or "application/json"
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, bytes):
        raise TypeError("body must be bytes, str, a dict or a list")
    props: list[Any] = [None] * len(PROPERTY_FIELDS)
    props[0] = message_id
    props[3] = subject
    props[5] = correlation_id
    props[6] = Symbol(content_type) if content_type else None
    while props and props[-1] is None:
        props.pop()
    header: tuple[Any, ...] = ()
    if time_to_live_ms is not None:
        header = (None, None, UInt(time_to_live_ms), None, None)
    return Message(
        header=header,
        message_annotations=dict(message_annotations or {}),
        properties=tuple(props),
        application_properties=dict(application_properties or {}),
        body=encode(Described(ULong(DATA), body)),
    )


def value_message(
    value: Any,
    *,
    correlation_id: Any = None,
    application_properties: Mapping[str, Any] | None = None,
) -> Message:
    """A request/response message: ``amqp-value`` body, ``correlation-id`` set (``$cbs`` and
    ``$management`` answers)."""
    props: Sequence[Any] = (None, None, None, None, None, correlation_id)
    return Message(
        properties=tuple(props),
        application_properties=dict(application_properties or {}),
        body=encode(Described(ULong(VALUE), value)),
    )


def timestamp_ms(seconds: float) -> Timestamp:
    """Wall-clock seconds as an AMQP timestamp."""
    return Timestamp(round(seconds * 1000))
