"""kubernetes-asyncio's own leader election (Lease create, get, PUT renew) against the emulator."""

from __future__ import annotations

import asyncio
import contextlib

from kubernetes_asyncio import client
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from spotguard.sim.cluster import ClusterEmulator
from tests.cluster_fixtures import wait_for


def _candidate(identity: str, api: client.ApiClient, leading: asyncio.Event) -> asyncio.Task[None]:
    async def started() -> None:
        leading.set()

    async def stopped() -> None:
        leading.clear()

    config = electionconfig.Config(
        LeaseLock("spotguard-queue", "default", identity, api),
        lease_duration=2,
        renew_deadline=1.5,
        retry_period=1,
        onstarted_leading=started,
        onstopped_leading=stopped,
    )
    return asyncio.create_task(leaderelection.LeaderElection(config).run(), name=identity)


async def test_one_leader_renews_and_another_takes_over_when_it_stops(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    a_leads, b_leads = asyncio.Event(), asyncio.Event()
    a = _candidate("agent-a", kube, a_leads)
    await wait_for(a_leads.is_set, timeout=3)
    b = _candidate("agent-b", kube, b_leads)
    try:
        await asyncio.sleep(1.5)  # a renews at least once; b keeps waiting
        assert not b_leads.is_set()
        a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await a
        await wait_for(b_leads.is_set, timeout=5)
    finally:
        b.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await b

    lease = await client.CoordinationV1Api(kube).read_namespaced_lease(
        "spotguard-queue", "default", _request_timeout=5
    )
    assert lease.spec.holder_identity == "agent-b"
    verbs = {
        (r.verb, r.name, r.status) for r in emulator.requests.since(0) if r.resource == "leases"
    }
    assert ("create", None, 201) in verbs
    assert ("update", "spotguard-queue", 200) in verbs  # renewals are PUTs
    assert ("get", "spotguard-queue", 200) in verbs
