"""spotguard's IMDS client against the simulator, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from spotguard.errors import ImdsHttpError, ImdsUnavailable, InvalidDocument
from spotguard.model import Kind, Status
from spotguard.observability.metrics import Metrics
from spotguard.sim.imds import Fault, FaultKind, ImdsSimulator
from tests.imds_helpers import NEIGHBOUR, VM, imds_client, max_in_window, sample


@pytest.fixture
async def sim() -> AsyncIterator[ImdsSimulator]:
    async with ImdsSimulator(vms=[VM, NEIGHBOUR], appear_after=0) as simulator:
        yield simulator


async def test_reads_events_with_metadata_header_and_no_forwarding(sim: ImdsSimulator) -> None:
    injected = sim.inject("Preempt", resources=[VM], not_before_in=30)
    async with imds_client(sim.url(VM)) as client:
        document = await client.scheduled_events()
    (event,) = document.events
    assert event.event_id == injected.event_id
    assert event.kind is Kind.PREEMPT
    assert event.status is Status.SCHEDULED
    assert event.not_before == injected.not_before
    assert document.incarnation == sim.incarnation
    (request,) = sim.requests(VM)
    assert request.headers["Metadata"] == "true"
    assert "X-Forwarded-For" not in request.headers
    assert not any(h.lower().startswith("proxy-") or h == "Via" for h in request.headers)
    assert request.query == "api-version=2020-07-01"


async def test_proxy_variables_are_ignored(
    sim: ImdsSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    async with imds_client(sim.url(VM)) as client:
        assert (await client.scheduled_events()).events == ()


async def test_identity_from_instance_metadata(sim: ImdsSimulator) -> None:
    async with imds_client(sim.url(NEIGHBOUR)) as client:
        compute = await client.instance_compute()
    assert compute["name"] == NEIGHBOUR
    assert compute["vmScaleSetName"] == "aks-spot-12345678-vmss"


async def test_acknowledgement_starts_the_event(sim: ImdsSimulator) -> None:
    event = sim.inject("Reboot", resources=[VM])
    async with imds_client(sim.url(VM)) as client:
        await client.start_events([event.event_id])
        (seen,) = (await client.scheduled_events()).events
    assert seen.status is Status.STARTED
    (ack,) = sim.acknowledgements()
    assert (ack.event_id, ack.vm, ack.started) == (event.event_id, VM, True)


@pytest.mark.parametrize(
    ("fault", "error", "outcome"),
    [
        (Fault(FaultKind.STATUS, status=500), ImdsHttpError, "http_5xx"),
        (Fault(FaultKind.STATUS, status=429), ImdsHttpError, "throttled"),
        (Fault(FaultKind.STATUS, status=404), ImdsHttpError, "http_4xx"),
        (Fault(FaultKind.HTML, status=502), ImdsHttpError, "http_5xx"),
        (Fault(FaultKind.HTML, status=200), InvalidDocument, "invalid_document"),
        (
            Fault(FaultKind.BODY, body=b'{"DocumentIncarnation": "x"}'),
            InvalidDocument,
            "invalid_document",
        ),
        (Fault(FaultKind.TRUNCATED), InvalidDocument, "invalid_document"),
        (Fault(FaultKind.NON_UTF8), InvalidDocument, "invalid_document"),
        (Fault(FaultKind.HUGE, size=3 * 1024 * 1024), InvalidDocument, "invalid_document"),
        (Fault(FaultKind.DELAY, delay=3.0), ImdsUnavailable, "timeout"),
        # aiohttp retries an idempotent request once on a dropped connection
        (Fault(FaultKind.DROP, count=2), ImdsUnavailable, "connection_error"),
    ],
)
async def test_bad_answers_raise_a_counted_error(
    sim: ImdsSimulator, fault: Fault, error: type[Exception], outcome: str
) -> None:
    metrics = Metrics(CollectorRegistry())
    sim.add_fault(fault)
    async with imds_client(sim.url(VM), timeout=0.5, metrics=metrics) as client:
        with pytest.raises(error):
            await client.scheduled_events()
        assert sample(metrics, "spotguard_imds_requests_total", outcome=outcome) == 1
        assert sample(metrics, "spotguard_imds_requests_total", outcome="ok") == 0
        # and the next answer is good again
        await client.scheduled_events()
        assert sample(metrics, "spotguard_imds_requests_total", outcome="ok") == 1


async def test_back_to_back_calls_stay_under_the_imds_rate_limit(sim: ImdsSimulator) -> None:
    async with imds_client(sim.url(VM)) as client:
        for _ in range(12):  # as fast as the caller can: the spacer paces them
            await client.scheduled_events()
    records = sim.requests(VM)
    assert len(records) == 12
    assert all(r.status == 200 for r in records)  # the simulator throttles above 5/s
    assert max_in_window(records) <= 4
