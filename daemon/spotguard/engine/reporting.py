"""One helper through which every step of a response reports: a log line, a metric and, where it
helps, a Kubernetes Event — so the three never disagree about what happened."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog

from spotguard.clock import Clock
from spotguard.model import Kind, Notice
from spotguard.observability.logging import bind_notice
from spotguard.observability.metrics import Metrics
from spotguard.sinks.events import EventRecorder, Reason

Logger = structlog.typing.FilteringBoundLogger


class Reporter:
    def __init__(
        self, *, metrics: Metrics, events: EventRecorder, clock: Clock, log: Logger
    ) -> None:
        self._metrics = metrics
        self._events = events
        self._clock = clock
        self._log = log
        self._pending: set[asyncio.Task[bool]] = set()

    def log(self, notice: Notice) -> Logger:
        return bind_notice(self._log, notice)

    def seconds_since_notice(self, notice: Notice) -> float:
        return max(0.0, (self._clock.now() - notice.first_seen).total_seconds())

    def noticed(self, notice: Notice) -> None:
        self._metrics.notice_seen(notice.kind, notice.source)

    def action(
        self, notice: Notice, action: str, outcome: str, *, timed: bool = True, **fields: object
    ) -> None:
        """An action on behalf of ``notice`` ended with ``outcome`` (success, error, skipped)."""
        self._metrics.action(action, outcome)
        since = self.seconds_since_notice(notice)
        if timed and outcome == "success":
            self._metrics.notice_to_action(action, since)
        emit = self.log(notice).warning if outcome == "error" else self.log(notice).info
        emit(f"{action}_{outcome}", seconds_since_notice=round(since, 3), **fields)

    def event(self, notice: Notice, reason: Reason, message: str) -> None:
        """Record a Kubernetes Event without waiting for it: Events never delay a drain."""
        task = asyncio.create_task(
            self._events.record(reason=reason, event_id=notice.event_id, message=message),
            name=f"event-{reason.value}",
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait for Events still being recorded (before exit, and in tests)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def active(self, notices: Mapping[str, Notice]) -> None:
        by_kind: dict[Kind, list[Notice]] = {kind: [] for kind in Kind}
        for notice in notices.values():
            by_kind[notice.kind].append(notice)
        for kind, active in by_kind.items():
            earliest = min((n.deadline for n in active), default=None)
            self._metrics.set_active(kind, len(active), earliest)
