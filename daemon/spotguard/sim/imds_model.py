"""Frozen data of the IMDS simulator: its events, and what it records of its clients.

A ``SimEvent`` renders itself as each Scheduled Events api-version shows it, so the facts about
those versions live here too.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from spotguard.clock import rfc3339
from spotguard.model import Kind
from spotguard.sources.imds_document import format_not_before

EVENTS_API_VERSIONS: Final = (
    "2017-03-01", "2017-08-01", "2017-11-01", "2019-01-01", "2019-04-01", "2019-08-01",
    "2020-07-01",
)  # fmt: skip
LATEST_EVENTS_API_VERSION: Final = EVENTS_API_VERSIONS[-1]

# EventStatus values; there is no "Completed": a finished event disappears.
SCHEDULED: Final = "Scheduled"
STARTED: Final = "Started"

# First Scheduled Events api-version that knows an EventType / a field. Events of a type the
# requested version does not know are left out of its document (an older client could not
# parse them; Azure documents each type as "added" in its version).
_EVENT_TYPE_SINCE: Final = {"Preempt": "2017-11-01", "Terminate": "2019-01-01"}
_FIELD_SINCE: Final = (
    ("Description", "2019-04-01"),
    ("EventSource", "2019-08-01"),
    ("DurationInSeconds", "2020-07-01"),
)
# 2017-03-01 (preview) still prefixed IaaS VM names in Resources with an underscore.
_UNDERSCORE_UNTIL: Final = "2017-08-01"


@dataclass(frozen=True, slots=True)
class TypeDefaults:
    """What an event of one type gets unless its injector says otherwise."""

    notice: float  # Azure's minimum notice, seconds
    duration: int  # DurationInSeconds: -1 unknown, 0 no impact
    started_for: float  # seconds Started before removal, before the speed-up
    description: str
    source: str


_HOST_MAINTENANCE: Final = "Host server is undergoing maintenance."
# Azure's typical "Started to removed" is ~10 minutes; these are shorter so rehearsals end.
TYPE_DEFAULTS: Final[Mapping[Kind, TypeDefaults]] = MappingProxyType(
    {
        Kind.PREEMPT: TypeDefaults(30, -1, 5, "", "Platform"),
        Kind.TERMINATE: TypeDefaults(300, -1, 5, "", "User"),
        Kind.REDEPLOY: TypeDefaults(600, -1, 30, _HOST_MAINTENANCE, "Platform"),
        Kind.REBOOT: TypeDefaults(900, -1, 10, _HOST_MAINTENANCE, "Platform"),
        Kind.FREEZE: TypeDefaults(
            900,
            5,
            5,
            "Virtual machine is being paused because of a memory-preserving Live Migration "
            "operation.",
            "Platform",
        ),
    }
)


def event_kind(kind_or_type: Kind | str) -> Kind:
    """``Kind.PREEMPT`` for itself, ``"preempt"`` or ``"Preempt"``; ValueError if unknown."""
    if isinstance(kind_or_type, Kind):
        return kind_or_type
    try:
        return Kind.from_event_type(kind_or_type)
    except ValueError:
        known = ", ".join(event_type_name(k) for k in Kind)
        raise ValueError(f"unknown event type {kind_or_type!r}; one of {known}") from None


def event_type_name(kind_or_type: Kind | str) -> str:
    """The ``EventType`` as Azure spells it: ``Preempt`` for ``Kind.PREEMPT`` or ``"preempt"``."""
    return event_kind(kind_or_type).value.capitalize()


def new_event_id() -> str:
    """An upper-case GUID, as Azure writes ``EventId``."""
    return str(uuid.uuid4()).upper()


def ceil_second(moment: datetime) -> datetime:
    """Round up to a whole second: RFC 1123 has 1 s resolution and a deadline must not shrink."""
    if moment.microsecond == 0:
        return moment
    return moment.replace(microsecond=0) + timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One scheduled event as the simulator holds it."""

    event_id: str
    event_type: str  # as Azure spells it: Preempt, Reboot, ...
    resources: tuple[str, ...]
    status: str  # SCHEDULED or STARTED
    not_before: datetime | None  # whole second; None once Started
    description: str
    event_source: str  # Platform or User
    duration_s: int  # DurationInSeconds
    started_for: float  # seconds Started before removal, before the speed-up

    @property
    def not_before_text(self) -> str:
        """``NotBefore`` as IMDS writes it: RFC 1123, or ``""`` once Started."""
        return format_not_before(self.not_before) if self.not_before else ""

    def imds(self, api_version: str = LATEST_EVENTS_API_VERSION) -> dict[str, Any] | None:
        """The event as ``api_version`` shows it, or None if that version has no such type."""
        if _EVENT_TYPE_SINCE.get(self.event_type, "") > api_version:
            return None
        prefix = "_" if api_version < _UNDERSCORE_UNTIL else ""
        out: dict[str, Any] = {
            "EventId": self.event_id,
            "EventStatus": self.status,
            "EventType": self.event_type,
            "ResourceType": "VirtualMachine",
            "Resources": [prefix + name for name in self.resources],
            "NotBefore": self.not_before_text,
        }
        values = {
            "Description": self.description,
            "EventSource": self.event_source,
            "DurationInSeconds": self.duration_s,
        }
        out.update({name: values[name] for name, since in _FIELD_SINCE if since <= api_version})
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "resources": list(self.resources),
            "status": self.status,
            "not_before": self.not_before_text,
            "not_before_rfc3339": rfc3339(self.not_before),
            "description": self.description,
            "event_source": self.event_source,
            "duration_in_seconds": self.duration_s,
            "started_for": self.started_for,
        }


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    """One event named in an accepted ``StartRequests`` POST."""

    event_id: str
    vm: str  # the VM whose IMDS received the POST
    wall: datetime
    loop_time: float
    started: bool  # this acknowledgement moved the event from Scheduled to Started

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "vm": self.vm,
            "wall": rfc3339(self.wall),
            "loop_time": self.loop_time,
            "started": self.started,
        }


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One ``/metadata`` request, stamped when it arrived."""

    wall: datetime
    loop_time: float
    vm: str
    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # Metadata, X-Forwarded-For, Forwarded, Via, Proxy-*, User-Agent
    status: int | None  # None: connection dropped, or the client left before the answer
    fault: str | None = None  # the injected fault that shaped the answer

    def to_json(self) -> dict[str, Any]:
        return {
            "wall": rfc3339(self.wall),
            "loop_time": self.loop_time,
            "vm": self.vm,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": dict(self.headers),
            "status": self.status,
            "fault": self.fault,
        }
