"""`spotguard watch` as operators run it, against the IMDS simulator, both real processes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiohttp

from tests.processes import spotguard

VM = "aks-spot-12345678-vmss_3"
NEIGHBOUR = "aks-spot-12345678-vmss_4"
DEAD_PROXY = "http://127.0.0.1:9"


async def control(session: aiohttp.ClientSession, method: str, url: str, **kw: object) -> dict:
    async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=5), **kw) as r:
        assert r.status < 300, await r.text()
        return await r.json()


async def test_watch_sees_own_events_within_one_poll_and_never_others() -> None:
    async with spotguard(
        "simulate-imds", "--port", "0", "--vm", VM, "--port", "0", "--vm", NEIGHBOUR
    ) as sim:
        ready = await sim.line(30)
        urls = {vm["name"]: vm["url"] for vm in ready["vms"]}
        env = {
            "SPOTGUARD_IMDS_URL": urls[VM],
            "SPOTGUARD_POLL_INTERVAL": "1s",
            # IMDS must never go through a proxy; these would break it if it did.
            "HTTP_PROXY": DEAD_PROXY,
            "HTTPS_PROXY": DEAD_PROXY,
            "http_proxy": DEAD_PROXY,
            "NO_PROXY": "",
        }
        async with (
            spotguard("watch", env=env) as watch,
            aiohttp.ClientSession(trust_env=False) as session,
        ):
            await asyncio.sleep(1.5)  # let it resolve identity and settle into polling
            base = urls[VM] + "/control/events"

            # Another VM of the scale set is preempted: every VM sees it, watch must not.
            await control(session, "POST", base, json={"type": "Preempt", "resources": [NEIGHBOUR]})
            await watch.no_line(2.5)

            before = datetime.now(UTC)
            preempt = await control(
                session, "POST", base, json={"type": "Preempt", "resources": [NEIGHBOUR, VM]}
            )
            line = await watch.line(5)
            assert line["change"] == "new"
            assert line["event_id"] == preempt["event_id"]
            assert line["kind"] == "preempt"
            assert line["status"] == "scheduled"
            assert line["cancelled"] is None
            assert sorted(line["resources"]) == sorted([NEIGHBOUR, VM])
            not_before = datetime.fromisoformat(line["not_before"])
            assert (not_before - before).total_seconds() >= 30  # Preempt's 30 s, rounded up
            deadline = datetime.fromisoformat(line["deadline"])
            assert (not_before - deadline).total_seconds() == 2  # the default safety margin
            latency = datetime.fromisoformat(line["first_seen"]) - before
            assert latency.total_seconds() <= 1.0 + 0.25, latency  # one poll interval

            reboot = await control(
                session, "POST", base, json={"type": "Reboot", "not_before_in": 900}
            )
            line = await watch.line(5)
            assert (line["change"], line["kind"], line["event_id"]) == (
                "new",
                "reboot",
                reboot["event_id"],
            )
            await control(session, "DELETE", f"{base}/{reboot['event_id']}")
            line = await watch.line(5)
            assert line["change"] == "gone"
            assert line["event_id"] == reboot["event_id"]
            assert line["cancelled"] is True
            assert line["status"] == "cancelled"

            await control(session, "POST", f"{base}/{preempt['event_id']}/start")
            line = await watch.line(5)
            assert (line["change"], line["status"], line["not_before"]) == (
                "updated",
                "started",
                None,
            )
            await control(session, "DELETE", f"{base}/{preempt['event_id']}")
            line = await watch.line(5)
            assert (line["change"], line["cancelled"]) == ("gone", False)
        assert watch.proc.returncode == 0  # SIGTERM ends it cleanly
