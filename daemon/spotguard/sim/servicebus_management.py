"""Request/response nodes of the local Service Bus broker: ``$cbs`` and ``<entity>/$management``.

Both take a request message (application property ``operation``, an ``amqp-value`` body) and
answer with ``correlation-id`` = the request's ``message-id``.

- ``$cbs`` ``put-token``: every token is accepted (answer 202, in ``status-code`` /
  ``status-description``) unless a ``reject_token`` fault says otherwise, or its audience names
  no entity (404, as on Azure). The SDK always sends one, even with SAS keys in a connection
  string for the emulator.
- ``$management`` (answer in ``statusCode`` / ``statusDescription``, plus ``errorCondition`` on
  failure): ``renew-lock``, ``peek-message``, ``update-disposition`` (the settlement fallback),
  ``schedule-message`` and ``cancel-scheduled-message``. Every other operation (deferred receive,
  sessions, rules) answers 501 ``amqp:not-implemented``, so the SDK raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from spotguard.sim.servicebus_codec import Array, Int, Symbol
from spotguard.sim.servicebus_faults import Fault
from spotguard.sim.servicebus_message import (
    DEADLETTER_SOURCE,
    ENQUEUED_TIME,
    LOCKED_UNTIL,
    MESSAGE_STATE,
    SCHEDULED_ENQUEUE_TIME,
    SEQUENCE_NUMBER,
    Message,
    parse_message,
    timestamp_ms,
    value_message,
)
from spotguard.sim.servicebus_store import (
    Entity,
    MessageState,
    Store,
    Stored,
    StoreError,
    Topic,
)

VENDOR: Final = "com.microsoft:"
_STATE_CODES: Final = {
    MessageState.AVAILABLE: 0,
    MessageState.LOCKED: 0,
    MessageState.DEFERRED: 1,
    MessageState.SCHEDULED: 2,
}


class RequestError(Exception):
    """A request answered with an error status."""

    def __init__(self, status: int, condition: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.condition = condition
        self.description = description


def _app(message: Message, key: str) -> Any:
    return message.application_properties.get(key)


def cbs_reply(request: Message, fault: Fault | None, *, known: bool = True) -> Message:
    """The answer to a ``$cbs`` request; ``known``: the token's audience names an entity (Azure
    reports an unknown entity here, with 404, before any link is attached)."""
    operation = _app(request, "operation")
    if operation != "put-token":
        status, description = 501, f"operation {operation!r} is not supported"
    elif fault is not None:
        status, description = fault.status, fault.description
    elif not known:
        audience = _app(request, "name")
        status, description = 404, f"The messaging entity {audience!r} could not be found."
    else:
        status, description = 202, "Accepted"
    return value_message(
        None,
        correlation_id=request.message_id,
        application_properties={
            "status-code": Int(status),
            "status-description": description,
        },
    )


def management_reply(
    store: Store, target: Callable[[], Entity | Topic], request: Message
) -> Message:
    """The answer to a ``$management`` request on the entity ``target`` returns."""
    operation = str(_app(request, "operation") or "")
    handler = _OPERATIONS.get(operation.removeprefix(VENDOR))
    if handler is None:
        return _error(
            request,
            RequestError(
                501, "amqp:not-implemented", f"operation {operation!r} is not implemented here"
            ),
        )
    try:
        result = handler(store, target(), _map_body(request))
    except StoreError as exc:
        status = 410 if "lock-lost" in exc.condition else 404
        return _error(request, RequestError(status, exc.condition, str(exc)))
    except RequestError as exc:
        return _error(request, exc)
    except (KeyError, TypeError, ValueError) as exc:
        return _error(request, RequestError(400, "amqp:invalid-field", f"bad request: {exc!r}"))
    if result is None:
        return _answer(request, 204, "No Content", {})
    return _answer(request, 200, "OK", result)


def _map_body(request: Message) -> Mapping[Any, Any]:
    body = request.body_value()
    if not isinstance(body, dict):
        raise RequestError(400, "amqp:decode-error", "the request body must be a map")
    return body


def _answer(request: Message, status: int, description: str, body: Any) -> Message:
    return value_message(
        body,
        correlation_id=request.message_id,
        application_properties={"statusCode": Int(status), "statusDescription": description},
    )


def _error(request: Message, error: RequestError) -> Message:
    return value_message(
        None,
        correlation_id=request.message_id,
        application_properties={
            "statusCode": Int(error.status),
            "statusDescription": error.description,
            "errorCondition": Symbol(error.condition),
        },
    )


def _items(value: Any) -> list[Any]:
    if isinstance(value, Array):
        return list(value.items)
    if isinstance(value, list):
        return value
    raise RequestError(400, "amqp:invalid-field", f"expected an array, got {type(value).__name__}")


def _entity(target: Entity | Topic) -> Entity:
    if isinstance(target, Topic):
        raise RequestError(400, "amqp:not-allowed", "a topic has no messages to operate on")
    return target


Handler = Callable[[Store, Entity | Topic, Mapping[Any, Any]], Any]


def _renew_lock(store: Store, target: Entity | Topic, body: Mapping[Any, Any]) -> Any:
    _entity(target)
    expirations = [timestamp_ms(store.renew(token)) for token in _items(body["lock-tokens"])]
    return {"expirations": Array(0x83, expirations)}


def _peek(store: Store, target: Entity | Topic, body: Mapping[Any, Any]) -> Any:
    entity = _entity(target)
    found = store.peek(entity, int(body["from-sequence-number"]), int(body["message-count"]))
    if not found:
        return None
    rendered = [render(s, locked_until=None, state=s.state).encode() for s in found]
    return {"messages": [{"message": m} for m in rendered]}


def _update_disposition(store: Store, target: Entity | Topic, body: Mapping[Any, Any]) -> Any:
    _entity(target)
    status = body["disposition-status"]
    for token in _items(body["lock-tokens"]):
        if status == "completed":
            store.complete(token)
        elif status == "abandoned":
            store.abandon(token)
        elif status == "defered":  # sic: the SDK's spelling
            store.defer(token)
        elif status == "suspended":
            store.dead_letter(
                token, body.get("deadletter-reason"), body.get("deadletter-description")
            )
        else:
            raise RequestError(400, "amqp:invalid-field", f"unknown disposition {status!r}")
    return {}


def _schedule(store: Store, target: Entity | Topic, body: Mapping[Any, Any]) -> Any:
    numbers: list[int] = []
    for entry in _items(body["messages"]):
        message = parse_message(bytes(entry["message"]))
        when = message.annotation(SCHEDULED_ENQUEUE_TIME)
        if not isinstance(when, int):
            raise RequestError(400, "amqp:invalid-field", "no x-opt-scheduled-enqueue-time")
        numbers.append(store.enqueue(target, message, scheduled_for=when / 1000))
    return {"sequence-numbers": Array(0x81, numbers)}


def _cancel(store: Store, target: Entity | Topic, body: Mapping[Any, Any]) -> Any:
    store.cancel_scheduled(target, [int(n) for n in _items(body["sequence-numbers"])])
    return {}


_OPERATIONS: Final[dict[str, Handler]] = {
    "renew-lock": _renew_lock,
    "peek-message": _peek,
    "update-disposition": _update_disposition,
    "schedule-message": _schedule,
    "cancel-scheduled-message": _cancel,
}


def render(
    stored: Stored, *, locked_until: float | None, state: MessageState | None = None
) -> Message:
    """``stored`` as Service Bus hands it out: its delivery count in the header, and the
    ``x-opt-*`` annotations (``locked_until`` for a PEEK_LOCK delivery, ``state`` for a peek)."""
    annotations: dict[Any, Any] = {
        SEQUENCE_NUMBER: stored.sequence_number,
        ENQUEUED_TIME: timestamp_ms(stored.enqueued_at),
    }
    if locked_until is not None:
        annotations[LOCKED_UNTIL] = timestamp_ms(locked_until)
    if stored.dead_letter_source is not None:
        annotations[DEADLETTER_SOURCE] = stored.dead_letter_source
    if state is not None:
        annotations[MESSAGE_STATE] = _STATE_CODES[state]
    return stored.message.for_delivery(
        delivery_count=stored.delivery_count, annotations=annotations
    )
