"""The CloudEvents spotguard publishes: one per notice and one per outcome (pure data, no I/O).

DESIGN.md's contract: CloudEvents 1.0 in structured JSON mode; ``type`` ``io.spotguard.notice.v1``
or ``io.spotguard.outcome.v1``; ``source`` ``/spotguard/<cluster>/<node>``; ``id``
``<node>:<event_id>:<phase>``, which is also the Service Bus ``message_id`` (so Service Bus
duplicate detection, where enabled, drops a retry that did reach the broker). Application
properties repeat what subscribers filter on, since SQL filters cannot read the body.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotguard.clock import rfc3339
from spotguard.model import Notice

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
NOTICE_TYPE = "io.spotguard.notice.v1"
OUTCOME_TYPE = "io.spotguard.outcome.v1"


class Phase(enum.StrEnum):
    """The step a message reports; part of its id, so each is published once per node."""

    NOTICED = "noticed"  # the notice itself (type notice.v1)
    CORDONED = "cordoned"
    CHECKPOINTED = "checkpointed"
    DRAINED = "drained"  # the drain's result, whatever it was (drained, partial, failed)
    ACKNOWLEDGED = "acknowledged"
    ENDED = "ended"  # the event left IMDS: completed or cancelled


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the messages come from: fixed for an agent's life."""

    cluster: str
    node: str
    nodepool: str

    @property
    def source(self) -> str:
        return f"/spotguard/{self.cluster or 'unknown'}/{self.node}"


@dataclass(frozen=True, slots=True)
class CloudEvent:
    id: str
    type: str
    source: str
    subject: str
    time: str
    data: Mapping[str, Any]
    #: Service Bus application properties (strings only: every SDK and filter reads them)
    properties: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        doc = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "type": self.type,
            "source": self.source,
            "subject": self.subject,
            "time": self.time,
            "datacontenttype": "application/json",
            "data": dict(self.data),
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _notice_data(notice: Notice) -> dict[str, Any]:
    return {
        "event_id": notice.event_id,
        "kind": notice.kind.value,
        "status": notice.status.value,
        "node": notice.node,
        "vm_name": notice.vm_name,
        "resources": list(notice.resources),
        "not_before": rfc3339(notice.not_before),
        "deadline": rfc3339(notice.deadline),
        "source": notice.source.value,
        "description": notice.description,
        "duration_s": notice.duration_s,
    }


def notice_event(notice: Notice, origin: Origin, now: datetime) -> CloudEvent:
    return _event(NOTICE_TYPE, Phase.NOTICED, notice, origin, now, _notice_data(notice))


def outcome_event(
    notice: Notice, origin: Origin, now: datetime, phase: Phase, **outcome: Any
) -> CloudEvent:
    """``outcome``: what happened (``result`` at least), merged into ``data`` with the notice."""
    data = {"notice": _notice_data(notice), "phase": phase.value, **outcome}
    return _event(OUTCOME_TYPE, phase, notice, origin, now, data)


def _event(
    type_: str,
    phase: Phase,
    notice: Notice,
    origin: Origin,
    now: datetime,
    data: Mapping[str, Any],
) -> CloudEvent:
    return CloudEvent(
        id=f"{origin.node}:{notice.event_id}:{phase.value}",
        type=type_,
        source=origin.source,
        subject=origin.node,
        time=rfc3339(now) or "",
        data=data,
        properties={
            "type": type_,
            "phase": phase.value,
            "kind": notice.kind.value,
            "cluster": origin.cluster,
            "nodepool": origin.nodepool,
            "node": origin.node,
            "event_id": notice.event_id,
        },
    )
