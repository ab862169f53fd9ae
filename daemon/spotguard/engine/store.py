"""The notice store: the one place that decides "new / updated / gone" per event.

It turns successive IMDS documents into changes for this VM. Events for other VMs are ignored.
An unchanged ``DocumentIncarnation`` means unchanged content and is skipped. An event that
vanishes while Scheduled and before its ``NotBefore`` was cancelled by Azure; one that vanishes
after Started (or after its ``NotBefore``, when Started was too short to be seen) has completed.
An entry IMDS sent but that could not be read is neither acted on nor taken as gone.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from spotguard.model import (
    ChangeType,
    Notice,
    NoticeChange,
    ScheduledEvent,
    ScheduledEventsDocument,
    Source,
    Status,
)
from spotguard.sources.identity import concerns


class NoticeStore:
    def __init__(self, *, vm_name: str, node: str, safety_margin: float) -> None:
        self._vm_name = vm_name
        self._node = node
        self._margin = timedelta(seconds=safety_margin)
        self._active: dict[str, Notice] = {}
        self._incarnation: int | None = None

    @property
    def active(self) -> dict[str, Notice]:
        """Notices currently announced for this VM, by event id (a copy)."""
        return dict(self._active)

    @property
    def incarnation(self) -> int | None:
        return self._incarnation

    def apply(self, document: ScheduledEventsDocument, seen_at: datetime) -> list[NoticeChange]:
        if document.incarnation == self._incarnation:
            return []
        self._incarnation = document.incarnation
        ours = {e.event_id: e for e in document.events if concerns(e.resources, self._vm_name)}
        unreadable = {r.event_id for r in document.rejected}
        changes: list[NoticeChange] = []
        for event_id, event in ours.items():
            previous = self._active.get(event_id)
            notice = self._notice(event, previous, seen_at)
            if previous is None:
                changes.append(NoticeChange(ChangeType.NEW, notice))
            elif notice != previous:
                changes.append(NoticeChange(ChangeType.UPDATED, notice, previous=previous))
            self._active[event_id] = notice
        for event_id in list(self._active):
            if event_id in ours or event_id in unreadable or None in unreadable:
                # Still announced, or possibly hidden in an entry we could not read: keep it.
                continue
            previous = self._active.pop(event_id)
            # Azure starts an event at NotBefore at the latest; one that vanishes after that
            # ran its course between two polls (a short Started phase), it was not cancelled.
            cancelled = previous.status is Status.SCHEDULED and (
                previous.not_before is None or seen_at < previous.not_before
            )
            gone = replace(previous, status=Status.CANCELLED) if cancelled else previous
            changes.append(
                NoticeChange(ChangeType.GONE, gone, previous=previous, cancelled=cancelled)
            )
        return changes

    def _notice(self, event: ScheduledEvent, previous: Notice | None, seen_at: datetime) -> Notice:
        if event.status is Status.SCHEDULED and event.not_before is not None:
            deadline = event.not_before - self._margin
        elif previous is not None:
            # Started: it is happening now, whatever NotBefore said.
            deadline = min(previous.deadline, seen_at)
        else:
            deadline = seen_at  # first seen already Started: act at once
        return Notice(
            event_id=event.event_id,
            kind=event.kind,
            status=event.status,
            node=self._node,
            vm_name=self._vm_name,
            resources=event.resources,
            not_before=event.not_before,
            deadline=deadline,
            source=Source.IMDS,
            description=event.description,
            duration_s=event.duration_s,
            first_seen=previous.first_seen if previous is not None else seen_at,
        )
