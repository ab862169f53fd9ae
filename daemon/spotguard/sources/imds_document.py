"""Parse IMDS Scheduled Events documents, trusting nothing.

IMDS is a remote service and its answers are input: a document that is not JSON, not UTF-8, an
HTML error page or absurdly large is rejected whole (``InvalidDocument``) and the caller keeps its
last good state. A document that is well formed but has one bad entry keeps its good entries and
reports the bad one in ``rejected``, with its ``EventId`` when readable, so the store neither
acts on it nor mistakes it for a cancellation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from spotguard.errors import InvalidDocument
from spotguard.model import (
    Kind,
    RejectedEvent,
    ScheduledEvent,
    ScheduledEventsDocument,
    Status,
)

#: Far above any real document (one entry is ~400 bytes) and small enough to parse in a blink.
MAX_DOCUMENT_BYTES = 1 << 20
MAX_EVENTS = 1000


class BadEntry(Exception):
    """One entry of a document cannot be read; the message says why."""


_STATUSES = {"Scheduled": Status.SCHEDULED, "Started": Status.STARTED}


def parse_not_before(value: str) -> datetime | None:
    """RFC 1123 (``Mon, 19 Sep 2016 18:29:47 GMT``) → aware UTC datetime; ``""`` → None.

    The weekday is not checked: Azure's own documentation shows documents whose weekday does not
    match the date, and the date is what counts.
    """
    if value == "":
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"NotBefore {value[:64]!r} is not an RFC 1123 date") from exc
    if parsed.tzinfo is None:  # "-0000" means UTC of unknown origin; IMDS always sends GMT
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_not_before(moment: datetime) -> str:
    """The inverse of ``parse_not_before``, as IMDS writes it (English names, any locale)."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def _str_field(entry: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = entry.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BadEntry(f"{name} must be a string, got {type(value).__name__}")
    return value


def _parse_event(entry: Mapping[str, Any]) -> ScheduledEvent:
    event_id = _str_field(entry, "EventId").strip()
    if not event_id:
        raise BadEntry("EventId is empty")
    event_type = _str_field(entry, "EventType")
    try:
        kind = Kind.from_event_type(event_type)
    except ValueError:
        raise BadEntry(f"unknown EventType {event_type[:64]!r}") from None
    status_text = _str_field(entry, "EventStatus")
    if status_text not in _STATUSES:
        raise BadEntry(f"unknown EventStatus {status_text[:64]!r}")
    resources = entry.get("Resources")
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        raise BadEntry("Resources must be a list of strings")
    try:
        not_before = parse_not_before(_str_field(entry, "NotBefore", required=False))
    except ValueError as exc:
        raise BadEntry(str(exc)) from None
    status = _STATUSES[status_text]
    if status is Status.SCHEDULED and not_before is None:
        raise BadEntry("a Scheduled event has no NotBefore")
    duration = entry.get("DurationInSeconds", -1)  # absent before api-version 2020-07-01
    if isinstance(duration, bool) or not isinstance(duration, int):
        raise BadEntry("DurationInSeconds must be an integer")
    return ScheduledEvent(
        event_id=event_id,
        event_type=event_type,
        kind=kind,
        resource_type=_str_field(entry, "ResourceType", required=False) or "VirtualMachine",
        resources=tuple(resources),
        status=status,
        not_before=not_before if status is Status.SCHEDULED else None,
        description=_str_field(entry, "Description", required=False),
        event_source=_str_field(entry, "EventSource", required=False),
        duration_s=duration,
    )


def _decode(raw: bytes) -> Any:
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise InvalidDocument(f"document of {len(raw)} bytes exceeds {MAX_DOCUMENT_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidDocument(f"not UTF-8 (byte {exc.start})") from None
    if text.lstrip()[:1] == "<":
        raise InvalidDocument(f"an HTML or XML page, not JSON: {text.strip()[:80]!r}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidDocument(f"not JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise InvalidDocument("not JSON: nested too deeply") from None


def parse_document(raw: bytes) -> ScheduledEventsDocument:
    """Bytes of a Scheduled Events answer → document; InvalidDocument when unusable whole."""
    data = _decode(raw)
    if not isinstance(data, dict):
        raise InvalidDocument(f"expected a JSON object, got {type(data).__name__}")
    incarnation = data.get("DocumentIncarnation")
    if isinstance(incarnation, bool) or not isinstance(incarnation, int):
        raise InvalidDocument("DocumentIncarnation missing or not an integer")
    entries = data.get("Events")
    if not isinstance(entries, list):
        raise InvalidDocument("Events missing or not a list")
    if len(entries) > MAX_EVENTS:
        raise InvalidDocument(f"{len(entries)} events exceed the limit of {MAX_EVENTS}")
    events: list[ScheduledEvent] = []
    rejected: list[RejectedEvent] = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            rejected.append(RejectedEvent(None, f"event is a {type(entry).__name__}"))
            continue
        raw_id = entry.get("EventId")
        event_id = raw_id.strip() if isinstance(raw_id, str) and raw_id.strip() else None
        try:
            event = _parse_event(entry)
        except BadEntry as exc:
            rejected.append(RejectedEvent(event_id, str(exc)))
            continue
        if event.event_id in seen:
            rejected.append(RejectedEvent(event.event_id, "duplicate EventId"))
            continue
        seen.add(event.event_id)
        events.append(event)
    return ScheduledEventsDocument(
        incarnation=incarnation, events=tuple(events), rejected=tuple(rejected)
    )
