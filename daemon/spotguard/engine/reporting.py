"""One helper through which every step of a response reports: a log line, a metric and, where it
helps, a Kubernetes Event and a Service Bus message — so they never disagree about what happened."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog

from spotguard.clock import Clock
from spotguard.model import Kind, Notice
from spotguard.observability.logging import bind_notice
from spotguard.observability.metrics import Metrics
from spotguard.sinks.cloudevents import Origin, Phase, notice_event, outcome_event
from spotguard.sinks.events import EventRecorder, Reason
from spotguard.sinks.servicebus import ServiceBusPublisher

Logger = structlog.typing.FilteringBoundLogger


class Reporter:
    def __init__(
        self,
        *,
        metrics: Metrics,
        events: EventRecorder,
        clock: Clock,
        log: Logger,
        publisher: ServiceBusPublisher | None = None,
        origin: Origin | None = None,
    ) -> None:
        self._metrics = metrics
        self._events = events
        self._clock = clock
        self._log = log
        self._publisher = publisher
        self._origin = origin
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

    def publish(self, notice: Notice, phase: Phase, **outcome: object) -> None:
        """Queue the notice (``NOTICED``) or an outcome for Service Bus; never waits."""
        if self._publisher is None or self._origin is None:
            return
        now = self._clock.now()
        if phase is Phase.NOTICED:
            message = notice_event(notice, self._origin, now)
        else:
            message = outcome_event(notice, self._origin, now, phase, **outcome)
        # Retried while the VM may still be there to send it: until NotBefore.
        ends = notice.not_before or notice.deadline
        window_end = asyncio.get_running_loop().time() + (ends - now).total_seconds()
        self._publisher.publish(message, window_end=window_end)

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
