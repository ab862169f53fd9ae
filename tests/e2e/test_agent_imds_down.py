"""IMDS stops answering: the agent turns unready and says it is blind, stays alive (restarting
would not bring IMDS back), and recovers by itself when IMDS answers again.

To keep the test short: the blind threshold is 1 s instead of 30 s, so the agent polls every
250 ms (a 1 s poll would brush against a 1 s threshold), and the backoff after errors is capped at
1 s instead of 5 s.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.agent_harness import agent_harness

BLIND_AFTER = 1.0
OUTAGE = 3.0


async def test_imds_outage_makes_the_agent_unready_and_blind_but_alive(tmp_path: Path) -> None:
    env = {
        "SPOTGUARD_BLIND_AFTER": f"{BLIND_AFTER:g}s",
        "SPOTGUARD_POLL_INTERVAL": "250ms",
        "SPOTGUARD_IMDS_MAX_BACKOFF": "1s",
    }
    async with agent_harness(tmp_path, env=env) as h:
        agent = h.agent(0)
        assert await agent.metric("spotguard_imds_blind") == 0

        # Every Scheduled Events request has its connection dropped for OUTAGE seconds.
        await h.imds.add_fault(kind="drop", seconds=OUTAGE)
        outage_from = time.time()

        liveness: list[int] = []  # /healthz, sampled all along

        async def unready() -> bool:
            liveness.append(await agent.status("/healthz"))
            return await agent.status("/readyz") == 503

        await h.wait_for(unready, timeout=BLIND_AFTER + 2, what="/readyz to answer 503")
        assert await agent.status("/healthz") == 200
        metrics = await agent.metrics()
        assert metrics["spotguard_imds_blind{}"] == 1
        assert metrics['spotguard_imds_requests_total{outcome="connection_error"}'] >= 1
        last_ok = metrics["spotguard_imds_last_success_timestamp_seconds{}"]
        assert last_ok <= outage_from + 0.1
        code, body = await agent.get("/readyz")
        assert code == 503
        assert "imds" in body.lower(), body  # says why

        async def ready_again() -> bool:
            liveness.append(await agent.status("/healthz"))
            return await agent.status("/readyz") == 200

        await h.wait_for(ready_again, timeout=OUTAGE + 2, what="/readyz 200 after the outage")
        metrics = await agent.metrics()
        assert metrics["spotguard_imds_blind{}"] == 0
        assert metrics["spotguard_imds_last_success_timestamp_seconds{}"] > outage_from + OUTAGE
        assert set(liveness) == {200}, liveness
        assert agent.running
