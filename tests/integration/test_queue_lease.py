"""Queue mode's leader election: two (or three) electors against the emulated API server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import structlog
from kubernetes_asyncio import client as k8s
from prometheus_client import CollectorRegistry

from spotguard.kube.client import KubeClient, KubeError
from spotguard.observability.metrics import Metrics
from spotguard.queue.leader import LEASE_NAME, LeaderElector, micro_time
from spotguard.sim.cluster import ClusterEmulator
from tests.cluster_fixtures import wait_for

NAMESPACE = "spotguard"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{LEASE_NAME}"
#: Short enough for tests; the same proportions as client-go's 15 s / 10 s / 2 s.
DURATION, RENEW, RETRY = 2.0, 1.2, 0.25
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
WALL_START = datetime(2026, 11, 28, 14, 0, 0, tzinfo=UTC)


class LoopClock:
    """Wall time that starts at WALL_START and runs with the event loop."""

    def __init__(self) -> None:
        self._start = asyncio.get_running_loop().time()

    def now(self) -> datetime:
        return WALL_START + timedelta(seconds=asyncio.get_running_loop().time() - self._start)


@pytest.fixture
async def clients(emulator: ClusterEmulator) -> AsyncIterator[Callable[[str], KubeClient]]:
    emulator.seed({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    made: list[KubeClient] = []

    def make(name: str) -> KubeClient:
        api = k8s.ApiClient(k8s.Configuration(host=emulator.url))
        api.user_agent = f"spotguard-test/{name}"  # lets a fault pick one elector's requests
        kube = KubeClient(api, timeout=1)
        made.append(kube)
        return kube

    yield make
    for kube in made:
        await kube.close()


def elector(
    clients: Callable[[str], KubeClient],
    name: str,
    *,
    metrics: Metrics | None = None,
    clock: LoopClock | None = None,
) -> LeaderElector:
    return LeaderElector(
        kube=clients(name),
        namespace=NAMESPACE,
        identity=name,
        clock=clock or LoopClock(),
        log=structlog.get_logger(),
        lease_duration=DURATION,
        renew_deadline=RENEW,
        retry_period=RETRY,
        metrics=metrics,
    )


async def lease(kube: KubeClient) -> dict[str, Any]:
    spec: dict[str, Any] = (await kube.request("GET", LEASE))["spec"]
    return spec


async def test_one_leads_and_renews_while_the_other_waits(
    emulator: ClusterEmulator, clients: Callable[[str], KubeClient]
) -> None:
    metrics = Metrics(CollectorRegistry())
    clock = LoopClock()
    async with elector(clients, "queue-a", metrics=metrics, clock=clock) as a:
        await asyncio.wait_for(a.is_leader.wait(), timeout=3)
        assert not a.lost.is_set()
        async with elector(clients, "queue-b") as b:
            first = await lease(clients("reader"))
            await asyncio.sleep(4 * RETRY)
            renewed = await lease(clients("reader"))
            assert not b.is_leader.is_set()
            assert b.lost.is_set()
            assert (a.term, b.term) == (1, 0)
        assert metrics.registry.get_sample_value("spotguard_queue_leader") == 1

    assert metrics.registry.get_sample_value("spotguard_queue_leader") == 0
    assert first["holderIdentity"] == renewed["holderIdentity"] == "queue-a"
    assert first["leaseDurationSeconds"] == 2
    assert first["leaseTransitions"] == renewed["leaseTransitions"] == 0
    assert first["acquireTime"] == renewed["acquireTime"]
    assert renewed["renewTime"] > first["renewTime"]
    for value in (first["acquireTime"], renewed["renewTime"]):
        assert MICRO_TIME.match(value), value
        assert WALL_START <= datetime.fromisoformat(value) <= clock.now()
    verbs = [(r.verb, r.status) for r in emulator.requests.since(0) if r.resource == "leases"]
    assert ("create", 201) in verbs
    assert ("update", 200) in verbs  # renewals are PUTs with the resourceVersion read


async def test_a_leader_that_stops_releases_and_the_other_takes_over_at_once(
    clients: Callable[[str], KubeClient],
) -> None:
    loop = asyncio.get_running_loop()
    a = elector(clients, "queue-a")
    b = elector(clients, "queue-b")
    async with a:
        await asyncio.wait_for(a.is_leader.wait(), timeout=3)
        async with b:
            await asyncio.sleep(2 * RETRY)
            assert not b.is_leader.is_set()
            await a.stop()
            assert a.lost.is_set()
            assert not a.is_leader.is_set()
            released = loop.time()
            await asyncio.wait_for(b.is_leader.wait(), timeout=DURATION)
            took = loop.time() - released
            spec = await lease(clients("reader"))
    # Released (no holder): the next try takes it, without waiting for the lease to expire.
    assert took < RETRY * 2.2 + 0.5 < DURATION
    assert spec["holderIdentity"] == "queue-b"
    assert spec["leaseTransitions"] == 1
    assert spec["leaseDurationSeconds"] == 2


@pytest.mark.parametrize(
    "fault", [{"status": 503}, {"delay": 30.0}], ids=["api-server-errors", "api-server-hangs"]
)
async def test_a_leader_that_cannot_renew_steps_down_before_the_lease_expires(
    emulator: ClusterEmulator, clients: Callable[[str], KubeClient], fault: dict[str, Any]
) -> None:
    loop = asyncio.get_running_loop()
    a = elector(clients, "queue-a")
    b = elector(clients, "queue-b")
    events: list[tuple[str, float]] = []
    async with a:
        await asyncio.wait_for(a.is_leader.wait(), timeout=3)
        async with b:
            await asyncio.sleep(2 * RETRY)  # b has seen a's lease and keeps waiting
            # From now on the API server answers none of a's requests (a partition).
            cut = loop.time()
            emulator.faults.add({"match": {"user_agent": "queue-a"}, **fault})

            async def record(name: str, event: asyncio.Event) -> None:
                await event.wait()
                events.append((name, loop.time()))

            watchers = [
                asyncio.create_task(record("a stepped down", a.lost)),
                asyncio.create_task(record("b leads", b.is_leader)),
            ]
            await asyncio.wait_for(asyncio.gather(*watchers), timeout=DURATION + 3)
            assert a.term == 1
            assert b.term == 1
            spec = await lease(clients("reader"))
    (first, stepped), (second, leads) = events
    assert (first, second) == ("a stepped down", "b leads")
    # a gave up within its renew deadline of the cut, before b could take the lease over ...
    assert stepped - cut <= RENEW + RETRY
    assert leads > stepped
    # ... and b took it within the lease duration (plus its polling) of a's last renewal.
    assert leads - cut <= DURATION + 2.2 * RETRY + 0.5
    assert spec["holderIdentity"] == "queue-b"
    assert spec["leaseTransitions"] == 1


async def test_candidates_racing_for_a_new_lease_get_exactly_one_leader(
    clients: Callable[[str], KubeClient],
) -> None:
    electors = [elector(clients, f"queue-{n}") for n in "abc"]
    for e in electors:
        await e.__aenter__()
    try:
        await wait_for(lambda: any(e.is_leader.is_set() for e in electors), timeout=3)
        for _ in range(8):
            await asyncio.sleep(RETRY)
            leaders = [e.identity for e in electors if e.is_leader.is_set()]
            assert len(leaders) == 1, leaders
        spec = await lease(clients("reader"))
        assert [spec["holderIdentity"]] == leaders
    finally:
        for e in electors:
            await e.stop()


async def test_a_leader_that_sees_another_holder_steps_down_at_once(
    emulator: ClusterEmulator, clients: Callable[[str], KubeClient]
) -> None:
    """Someone else's write took the lease (an operator, a replica that thought it expired)."""
    a = elector(clients, "queue-a")
    async with a:
        await asyncio.wait_for(a.is_leader.wait(), timeout=3)
        reader = clients("reader")
        while True:  # a renews meanwhile: redo on 409, as any writer of a lease must
            current = await reader.request("GET", LEASE)
            current["spec"]["holderIdentity"] = "intruder"
            current["spec"]["renewTime"] = micro_time(datetime.now(UTC))
            try:
                await reader.request("PUT", LEASE, body=current)
                break
            except KubeError as exc:
                if exc.status != 409:
                    raise
        await asyncio.wait_for(a.lost.wait(), timeout=2 * RETRY + 1)
        assert not a.is_leader.is_set()
    # It was not ours any more: stopping did not release it.
    assert (await lease(clients("reader")))["holderIdentity"] == "intruder"


@pytest.mark.parametrize(
    ("duration", "renew", "retry"), [(10, 10, 2), (15, 10, 9), (15, 20, 2), (15, 10, 0)]
)
async def test_inconsistent_timings_are_refused(
    clients: Callable[[str], KubeClient], duration: float, renew: float, retry: float
) -> None:
    with pytest.raises(ValueError, match="lease_duration > renew_deadline"):
        LeaderElector(
            kube=clients("x"),
            namespace=NAMESPACE,
            identity="x",
            clock=LoopClock(),
            log=structlog.get_logger(),
            lease_duration=duration,
            renew_deadline=renew,
            retry_period=retry,
        )


def test_micro_time_is_rfc3339_with_microseconds_in_utc() -> None:
    moment = datetime(2026, 11, 28, 16, 0, 1, 5, tzinfo=timezone(timedelta(hours=1)))
    assert micro_time(moment) == "2026-11-28T15:00:01.000005Z"
