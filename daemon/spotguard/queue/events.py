"""One Service Bus message from Event Grid → one ``FleetEvent``, or ``InvalidEvent``.

Queue mode reads the Azure Resource Notifications *HealthResources* system topic (subscription
scope), which Event Grid delivers to a Service Bus queue, one event per message
(learn.microsoft.com/azure/event-grid/event-schema-health-resources,
.../event-grid/handler-service-bus). Two envelopes are accepted, chosen by the event
subscription's delivery schema:

- Event Grid schema: ``{id, topic, subject, eventType, eventTime, data, dataVersion,
  metadataVersion}``, as a single object or an array holding exactly one;
- CloudEvents 1.0, structured JSON mode: ``{specversion: "1.0", id, source, subject, type, time,
  data}`` (content type ``application/cloudevents+json``), or binary mode, where the attributes
  are ``cloudEvents_*`` (or ``cloudEvents:*``) application properties and the body is ``data``.

Both carry the same ``data``: ``resourceInfo.properties`` holds ``targetResourceId`` (the VM),
``occurredTime`` and, for ``...HealthResources.ResourceAnnotated``, ``annotationName``
(learn.microsoft.com/azure/service-health/resource-health-vm-annotation). Three answers:

- relevant: a scale-set VM (or a single VM) annotated ``VirtualMachinePreempted`` (spot
  eviction) or ``VirtualMachineDeallocationInitiated``; the consumer hands it to recovery;
- valid but irrelevant (``kind`` IGNORED, with ``ignore_reason``): any other annotation, an
  ``AvailabilityStatusChanged``, a scale-set-level annotation, an Event Grid lifecycle event;
  the consumer completes it without action;
- ``InvalidEvent`` with a one-line ``reason``: anything else (not JSON, not one event, missing
  or mistyped fields, an unknown event type); the consumer dead-letters it with that reason.

Nothing else ever escapes ``parse_message``: a message is data from outside.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from spotguard.errors import IdentityError, SpotguardError
from spotguard.sources.identity import VmIdentity, parse_vm_resource_id

ANNOTATED = "Microsoft.ResourceNotifications.HealthResources.ResourceAnnotated"
AVAILABILITY_CHANGED = "Microsoft.ResourceNotifications.HealthResources.AvailabilityStatusChanged"
#: Event Grid's own lifecycle events (validation, subscription deleted): nothing to act on.
EVENT_GRID_PREFIX = "Microsoft.EventGrid."

#: Event Grid events are at most 1 MB; a message much larger than that is not one of them.
MAX_BODY_BYTES = 2 << 20
#: Reasons end up in the dead-letter queue's DeadLetterReason (limited to 4096 characters).
MAX_REASON_CHARS = 400


class EventKind(enum.StrEnum):
    PREEMPTED = "preempted"
    DEALLOCATED = "deallocated"
    IGNORED = "ignored"


#: annotationName (compared case-insensitively) → what it means for the VM's node.
RELEVANT_ANNOTATIONS: Mapping[str, EventKind] = {
    "virtualmachinepreempted": EventKind.PREEMPTED,
    "virtualmachinedeallocationinitiated": EventKind.DEALLOCATED,
}


class Schema(enum.StrEnum):
    EVENT_GRID = "eventgrid"
    CLOUD_EVENTS = "cloudevents"


class InvalidEvent(SpotguardError):
    """A message that is not a readable Event Grid / CloudEvents event: dead-letter it."""

    def __init__(self, reason: str) -> None:
        reason = reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"
        super().__init__(f"invalid event: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FleetEvent:
    """One Resource Health event about a VM, as queue mode understands it."""

    event_id: str
    schema: Schema
    event_type: str
    kind: EventKind
    resource_id: str  # data.resourceInfo.properties.targetResourceId (or the subject)
    vm: VmIdentity | None  # None when the resource is not a VM (e.g. the scale set itself)
    annotation: str | None  # ResourceAnnotated only
    availability_state: str | None  # AvailabilityStatusChanged only
    occurred_at: datetime  # when it happened to the VM: occurredTime, else the envelope's time
    published_at: datetime  # the envelope's time
    reason: str = ""
    context: str = ""
    category: str = ""
    ignore_reason: str = ""  # why an IGNORED event needs no action

    @property
    def relevant(self) -> bool:
        return self.kind is not EventKind.IGNORED

    @property
    def vm_name(self) -> str:
        """The VM as IMDS names it (``<scale set>_<instance>``), or the resource id."""
        return self.vm.resource_name if self.vm is not None else self.resource_id


def parse_message(
    body: bytes | bytearray | memoryview | str,
    *,
    content_type: str | None = None,
    application_properties: Mapping[Any, Any] | None = None,
) -> FleetEvent:
    """Read one Service Bus message body; raises only ``InvalidEvent``."""
    try:
        return _parse(body, content_type, _properties(application_properties))
    except InvalidEvent:
        raise
    except Exception as exc:  # a message from outside must never take the consumer down
        raise InvalidEvent(f"unreadable event ({type(exc).__name__})") from exc


def _parse(
    body: bytes | bytearray | memoryview | str,
    content_type: str | None,
    properties: dict[str, str],
) -> FleetEvent:
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidEvent(f"body of {len(raw)} bytes is larger than any Event Grid event")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media and "json" not in media:
        raise InvalidEvent(f"content type {media!r} is not JSON")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidEvent("body is not JSON") from None
    binary = _binary_cloud_event(properties, document)
    if binary is not None:
        return _cloud_event(binary)
    if isinstance(document, list):
        if len(document) != 1:
            raise InvalidEvent(
                f"an array of {len(document)} events; Event Grid delivers one per message"
            )
        document = document[0]
    if not isinstance(document, dict):
        raise InvalidEvent(f"body is a JSON {_json_type(document)}, not an event object")
    if "specversion" in document:
        return _cloud_event(document)
    if "eventType" in document:
        return _event_grid_event(document)
    raise InvalidEvent("neither a CloudEvent (specversion) nor an Event Grid event (eventType)")


# --- envelopes ----------------------------------------------------------------------------


def _event_grid_event(event: dict[str, Any]) -> FleetEvent:
    return _health_event(
        Schema.EVENT_GRID,
        event_id=_required_text(event, "id"),
        event_type=_required_text(event, "eventType"),
        subject=_optional_text(event, "subject"),
        published=_time(event, "eventTime", required=True),
        data=event.get("data"),
    )


def _cloud_event(event: dict[str, Any]) -> FleetEvent:
    version = event.get("specversion")
    if version != "1.0":
        raise InvalidEvent(f"CloudEvents specversion {_show(version)} is not 1.0")
    _required_text(event, "source")
    data_type = _optional_text(event, "datacontenttype").split(";", 1)[0].strip().lower()
    if data_type and "json" not in data_type:
        raise InvalidEvent(f"CloudEvents datacontenttype {data_type!r} is not JSON")
    if "data_base64" in event and "data" not in event:
        raise InvalidEvent("CloudEvents data_base64 is not a Resource Health event")
    return _health_event(
        Schema.CLOUD_EVENTS,
        event_id=_required_text(event, "id"),
        event_type=_required_text(event, "type"),
        subject=_optional_text(event, "subject"),
        published=_time(event, "time", required=False),
        data=event.get("data"),
    )


_CE_PREFIXES = ("cloudEvents_", "cloudEvents:")


def _binary_cloud_event(properties: dict[str, str], data: Any) -> dict[str, Any] | None:
    """CloudEvents' AMQP binding, binary mode: attributes in application properties."""
    attributes = {
        key[len(prefix) :]: value
        for key, value in properties.items()
        for prefix in _CE_PREFIXES
        if key.startswith(prefix)
    }
    if "specversion" not in attributes:
        return None
    return {**attributes, "data": data}


# --- the HealthResources payload ----------------------------------------------------------


def _health_event(
    schema: Schema,
    *,
    event_id: str,
    event_type: str,
    subject: str,
    published: datetime | None,
    data: Any,
) -> FleetEvent:
    if event_type.startswith(EVENT_GRID_PREFIX):
        at = published or _never()
        return FleetEvent(
            event_id=event_id,
            schema=schema,
            event_type=event_type,
            kind=EventKind.IGNORED,
            resource_id=subject,
            vm=None,
            annotation=None,
            availability_state=None,
            occurred_at=at,
            published_at=at,
            ignore_reason=f"Event Grid lifecycle event {event_type}",
        )
    if event_type.casefold() not in (ANNOTATED.casefold(), AVAILABILITY_CHANGED.casefold()):
        raise InvalidEvent(f"unknown event type {event_type!r}")
    if not isinstance(data, dict):
        raise InvalidEvent(f"data is a JSON {_json_type(data)}, not an object")
    info = data.get("resourceInfo")
    if not isinstance(info, dict):
        raise InvalidEvent("data.resourceInfo is missing or not an object")
    properties = info.get("properties")
    if not isinstance(properties, dict):
        raise InvalidEvent("data.resourceInfo.properties is missing or not an object")
    resource_id = _optional_text(properties, "targetResourceId") or subject
    if not resource_id:
        raise InvalidEvent("no targetResourceId and no subject: which resource is it about?")
    operational = data.get("operationalInfo")
    occurred = (
        _time(properties, "occurredTime", required=False)
        or (
            _time(operational, "resourceEventTime", required=False)
            if isinstance(operational, dict)
            else None
        )
        or published
    )
    if occurred is None:
        raise InvalidEvent("no time: neither occurredTime, resourceEventTime nor the envelope's")
    vm = _vm(resource_id)
    annotated = event_type.casefold() == ANNOTATED.casefold()
    annotation = _required_text(properties, "annotationName") if annotated else None
    state = None if annotated else _required_text(properties, "availabilityState")
    kind, ignore_reason = _classify(annotation, state, vm, resource_id)
    return FleetEvent(
        event_id=event_id,
        schema=schema,
        event_type=ANNOTATED if annotated else AVAILABILITY_CHANGED,
        kind=kind,
        resource_id=resource_id,
        vm=vm,
        annotation=annotation,
        availability_state=state,
        occurred_at=occurred,
        published_at=published or occurred,
        reason=_optional_text(properties, "reason"),
        context=_optional_text(properties, "context"),
        category=_optional_text(properties, "category"),
        ignore_reason=ignore_reason,
    )


def _classify(
    annotation: str | None, state: str | None, vm: VmIdentity | None, resource_id: str
) -> tuple[EventKind, str]:
    """What the event means for a node, and why not when it means nothing."""
    if annotation is None:
        return EventKind.IGNORED, f"availability status {state!r}: annotations tell what happened"
    kind = RELEVANT_ANNOTATIONS.get(annotation.casefold())
    if kind is None:
        return EventKind.IGNORED, f"annotation {annotation!r} needs no action"
    if vm is None:
        if not _is_scale_set(resource_id):
            raise InvalidEvent(f"targetResourceId {resource_id[:200]!r} is not a VM resource id")
        return EventKind.IGNORED, f"annotation {annotation!r} is about a scale set, not a VM"
    return kind, ""


def _vm(resource_id: str) -> VmIdentity | None:
    try:
        return parse_vm_resource_id(resource_id)
    except IdentityError:
        return None


def _is_scale_set(resource_id: str) -> bool:
    parts = [p.lower() for p in resource_id.split("/") if p]
    return (
        len(parts) == 8
        and parts[0] == "subscriptions"
        and parts[2] == "resourcegroups"
        and parts[4:7] == ["providers", "microsoft.compute", "virtualmachinescalesets"]
    )


# --- fields -------------------------------------------------------------------------------


def _properties(properties: Mapping[Any, Any] | None) -> dict[str, str]:
    """Application properties as text (the SDK hands keys and values over as bytes or str)."""
    out: dict[str, str] = {}
    for key, value in (properties or {}).items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        out[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out


def _required_text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidEvent(f"{key} is {_show(value)}, expected a non-empty string")
    return value.strip()


def _optional_text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidEvent(f"{key} is {_show(value)}, expected a string")
    return value.strip()


def _time(obj: Mapping[str, Any], key: str, *, required: bool) -> datetime | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{key} is {_show(value)}, expected an RFC 3339 time")
    return parse_time(value, key)


def parse_time(text: str, what: str = "time") -> datetime:
    """RFC 3339 as Azure writes it (``2023-07-24T19:20:37.9245071Z``, 7 fractional digits) →
    aware UTC. A time without offset is UTC (Azure's event times are all UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidEvent(f"{what} {text[:60]!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidEvent(f"{what} {text[:60]!r} is out of range") from None


def _never() -> datetime:
    return datetime.min.replace(tzinfo=UTC)


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null"


def _show(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        return repr(value[:60]) if value.strip() else "empty"
    return f"a JSON {_json_type(value)}"
