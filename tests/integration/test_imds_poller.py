"""The poller against the simulator: rates measured at the simulator, not inside the client."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
import structlog
from prometheus_client import CollectorRegistry

from spotguard.clock import SystemClock
from spotguard.engine.store import NoticeStore
from spotguard.model import ChangeType, NoticeChange, ScheduledEventsDocument
from spotguard.observability.metrics import Metrics
from spotguard.sim.imds import Fault, FaultKind, ImdsSimulator
from spotguard.sources.imds import ImdsPoller
from tests.imds_helpers import VM, gaps, imds_client, max_in_window, sample


class Recorder:
    """Feeds documents into a real store and keeps every change."""

    def __init__(self) -> None:
        self.store = NoticeStore(vm_name=VM, node="node-3", safety_margin=2.0)
        self.changes: list[NoticeChange] = []
        self.documents = 0

    def __call__(self, document: ScheduledEventsDocument, seen_at: datetime) -> None:
        self.documents += 1
        self.changes.extend(self.store.apply(document, seen_at))


async def run_poller(
    url: str, *, interval: float, seconds: float, recorder: Recorder, metrics: Metrics
) -> ImdsPoller:
    async with imds_client(url, timeout=0.5, metrics=metrics) as client:
        poller = ImdsPoller(
            client=client,
            on_document=recorder,
            clock=SystemClock(),
            metrics=metrics,
            log=structlog.get_logger(),
            interval=interval,
            max_backoff=2.0,
            enable_timeout=5.0,
            rng=random.Random(7),
        )
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return poller


def unreadable_entry(event_id: str) -> bytes:
    entry = {"EventId": event_id, "EventStatus": "Scheduled", "Resources": [VM]}
    return json.dumps({"DocumentIncarnation": 99, "Events": [entry]}).encode()


@pytest.fixture
async def sim() -> AsyncIterator[ImdsSimulator]:
    async with ImdsSimulator(vms=[VM], appear_after=0) as simulator:
        yield simulator


@pytest.mark.parametrize("interval", [0.25, 1.0])
async def test_storm_of_errors_never_raises_the_rate(sim: ImdsSimulator, interval: float) -> None:
    # 429s, 500s and an HTML 503 page, back to back: what a struggling IMDS looks like.
    for fault in (
        Fault(FaultKind.STATUS, status=429, seconds=1.5),
        Fault(FaultKind.STATUS, status=500, seconds=3.0),
        Fault(FaultKind.HTML, status=503, seconds=4.0),
    ):
        sim.add_fault(fault)
    metrics, recorder = Metrics(CollectorRegistry()), Recorder()
    await run_poller(sim.url(), interval=interval, seconds=5.5, recorder=recorder, metrics=metrics)
    records = sim.requests(VM)
    assert len(records) >= 3
    assert max_in_window(records) < 5  # Azure's limit, measured where it applies
    # Never faster than configured: every gap between arrivals is at least one interval
    # (less a little network jitter between two loopback requests).
    assert min(gaps(records)) >= interval - 0.05
    assert all(r.headers.get("Metadata") == "true" for r in records)
    assert sample(metrics, "spotguard_imds_requests_total", outcome="http_5xx") >= 1


async def test_storm_backs_off_and_recovers(sim: ImdsSimulator) -> None:
    sim.add_fault(Fault(FaultKind.STATUS, status=500, seconds=3.0))
    event = sim.inject("Preempt", resources=[VM], not_before_in=30)
    metrics, recorder = Metrics(CollectorRegistry()), Recorder()
    poller = await run_poller(
        sim.url(), interval=0.25, seconds=5.0, recorder=recorder, metrics=metrics
    )
    failing = [r for r in sim.requests(VM) if r.status == 500]
    # Backoff: during 3 s of errors, far fewer than the 12 requests the interval would allow.
    assert 2 <= len(failing) <= 8
    assert [c.notice.event_id for c in recorder.changes] == [event.event_id]
    assert poller.last_success is not None


async def test_enablement_410s_are_retried_at_the_poll_interval(sim: ImdsSimulator) -> None:
    async with ImdsSimulator(vms=[VM], appear_after=0, enablement=1.5) as enabling:
        metrics, recorder = Metrics(CollectorRegistry()), Recorder()
        await run_poller(
            enabling.url(), interval=0.25, seconds=2.5, recorder=recorder, metrics=metrics
        )
        records = enabling.requests(VM)
    gone = [r for r in records if r.status == 410]
    assert len(gone) >= 4  # 410 is expected while enabling: no backoff
    assert max(gaps(gone)) < 0.4
    assert recorder.documents >= 1  # and polling carried on once it was enabled


async def test_bad_documents_keep_the_last_good_state(sim: ImdsSimulator) -> None:
    event = sim.inject("Preempt", resources=[VM], not_before_in=30)
    metrics, recorder = Metrics(CollectorRegistry()), Recorder()
    async with imds_client(sim.url(), metrics=metrics) as client:
        poller = ImdsPoller(
            client=client,
            on_document=recorder,
            clock=SystemClock(),
            metrics=metrics,
            log=structlog.get_logger(),
            interval=0.25,
            max_backoff=1.0,
            enable_timeout=5.0,
        )
        await poller.poll_once()
        good = poller.last_success
        for fault in (
            Fault(FaultKind.BODY, body=b'{"DocumentIncarnation": 99, "Events": "none"}'),
            Fault(FaultKind.HTML, status=200),
            Fault(FaultKind.NON_UTF8),
            Fault(FaultKind.TRUNCATED),
            # A valid document in which our event's entry cannot be read (no EventType).
            Fault(FaultKind.BODY, body=unreadable_entry(event.event_id)),
        ):
            sim.add_fault(fault)
            await poller.poll_once()
        assert poller.last_success is not None
    assert sample(metrics, "spotguard_imds_requests_total", outcome="invalid_document") == 4
    # The last was a valid document whose only entry was unreadable: counted, ignored, and
    # not mistaken for a cancellation of the event it names.
    assert sample(metrics, "spotguard_imds_invalid_events_total") == 1
    assert [c.change for c in recorder.changes] == [ChangeType.NEW]
    assert set(recorder.store.active) == {event.event_id}
    assert good is not None
