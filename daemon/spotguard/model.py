"""Frozen data shared by every layer: what Azure announced, as spotguard understands it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotguard.clock import rfc3339


class Kind(enum.StrEnum):
    """Lower-case names of IMDS ``EventType`` values."""

    PREEMPT = "preempt"
    TERMINATE = "terminate"
    REDEPLOY = "redeploy"
    REBOOT = "reboot"
    FREEZE = "freeze"

    @classmethod
    def from_event_type(cls, event_type: str) -> Kind:
        """Map IMDS ``EventType`` (``Preempt``) to a kind; ValueError if unknown."""
        return cls(event_type.lower())


class Status(enum.StrEnum):
    SCHEDULED = "scheduled"
    STARTED = "started"
    CANCELLED = "cancelled"


class Source(enum.StrEnum):
    IMDS = "imds"
    DRILL = "drill"


@dataclass(frozen=True, slots=True)
class ScheduledEvent:
    """One entry of an IMDS Scheduled Events document, validated and typed."""

    event_id: str
    event_type: str  # as Azure spells it: Preempt, Reboot, ...
    kind: Kind
    resource_type: str
    resources: tuple[str, ...]
    status: Status  # scheduled or started; IMDS has no "completed"
    not_before: datetime | None  # None once Started (IMDS sends "")
    description: str
    event_source: str  # Platform or User
    duration_s: int  # -1 unknown, 0 no interruption


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An entry of a document that could not be read; ``event_id`` when it was recognisable."""

    event_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class ScheduledEventsDocument:
    incarnation: int
    events: tuple[ScheduledEvent, ...]
    rejected: tuple[RejectedEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class Notice:
    """A scheduled event that concerns this VM, with the deadline spotguard works to.

    ``deadline`` is wall-clock UTC: ``NotBefore`` minus the safety margin, or the moment the
    event was first seen when it arrived already Started (act at once).
    """

    event_id: str
    kind: Kind
    status: Status
    node: str
    vm_name: str
    resources: tuple[str, ...]
    not_before: datetime | None
    deadline: datetime
    source: Source
    description: str
    duration_s: int
    first_seen: datetime


class ChangeType(enum.StrEnum):
    NEW = "new"
    UPDATED = "updated"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class NoticeChange:
    """What the notice store saw change for one event.

    For ``gone``: ``cancelled`` is True when the event vanished while still Scheduled (Azure
    cancelled it) and False when it vanished after Started (it completed).
    """

    change: ChangeType
    notice: Notice
    previous: Notice | None = None
    cancelled: bool = False


def change_record(change: NoticeChange) -> dict[str, Any]:
    """One JSON-ready line describing a change (what ``spotguard watch`` prints)."""
    notice = change.notice
    return {
        "change": change.change.value,
        "event_id": notice.event_id,
        "kind": notice.kind.value,
        "status": notice.status.value,
        "not_before": rfc3339(notice.not_before),
        "deadline": rfc3339(notice.deadline),
        "cancelled": change.cancelled if change.change is ChangeType.GONE else None,
        "resources": list(notice.resources),
        "vm_name": notice.vm_name,
        "node": notice.node,
        "description": notice.description,
        "duration_s": notice.duration_s,
        "source": notice.source.value,
        "first_seen": rfc3339(notice.first_seen),
    }
