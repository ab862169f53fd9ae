"""Notices as the agent records them, for tests of what consumes them (Service Bus, fleet)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from spotguard.model import Kind, Notice, Source, Status

EVENT_ID = "A123BC45-0000-4000-8000-000000000003"


def preempt_notice(*, node: str, vm: str, not_before: datetime, **changes: Any) -> Notice:
    """A Scheduled Preempt of ``vm`` only, seen by the agent on ``node`` 30 s before
    ``not_before``; its deadline is ``not_before`` less the default 2 s safety margin."""
    notice = Notice(
        event_id=EVENT_ID,
        kind=Kind.PREEMPT,
        status=Status.SCHEDULED,
        node=node,
        vm_name=vm,
        resources=(vm,),
        not_before=not_before,
        deadline=not_before - timedelta(seconds=2),
        source=Source.IMDS,
        description="Virtual machine is being preempted.",
        duration_s=-1,
        first_seen=not_before - timedelta(seconds=30),
    )
    return replace(notice, **changes)
