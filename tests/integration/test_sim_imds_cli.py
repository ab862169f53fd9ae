"""``spotguard simulate-imds`` as a real child process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from spotguard.sim.imds import SCENARIOS

H = {"Metadata": "true"}
SE = "/metadata/scheduledevents?api-version=2020-07-01"


async def spawn(*args: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spotguard",
        "simulate-imds",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=15)
        listening: dict[str, Any] = json.loads(line)
    except BaseException:
        proc.kill()
        await proc.communicate()
        raise
    return proc, listening


async def events(session: aiohttp.ClientSession, url: str, timeout: float = 3) -> Any:
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while True:
        async with session.get(url + SE, headers=H) as resp:
            assert resp.status == 200
            doc = await resp.json()
        if doc["Events"] or loop.time() > until:
            return doc
        await asyncio.sleep(0.25)  # 4 requests/s: under IMDS's 5 requests/s


async def test_cli_serves_a_scenario_and_exits_cleanly_on_sigterm() -> None:
    before = datetime.now(UTC)
    proc, listening = await spawn("--port", "0", "--scenario", "preempt-short", "--speedup", "10")
    try:
        assert listening["event"] == "listening"
        assert listening["scenario"] == "preempt-short"
        [vm] = listening["vms"]
        assert vm["name"] == "aks-spot-12345678-vmss_0"
        assert vm["url"].startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as session:
            doc = await events(session, vm["url"])
            async with session.get(vm["url"] + SE) as resp:
                assert resp.status == 400  # no Metadata header
        [event] = doc["Events"]
        assert event["EventId"] == listening["event_id"]
        assert (event["EventType"], event["Resources"]) == ("Preempt", [vm["name"]])
        # The speed-up never shortens the notice.
        assert parsedate_to_datetime(event["NotBefore"]) >= before + timedelta(seconds=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0, err.decode()
    assert out == b""  # the listening line was the only thing on stdout
    logs = [json.loads(line) for line in err.decode().splitlines()]
    assert "imds_sim_event_added" in [entry["event"] for entry in logs]


async def test_cli_serves_several_vms_sharing_events_and_stops_on_sigint() -> None:
    proc, listening = await spawn(
        "--port", "0", "--vm", "aks-gpu-87654321-vmss_3", "--port", "0", "--scenario", "other-vm",
        "--speedup", "10",
    )  # fmt: skip
    try:
        names = [vm["name"] for vm in listening["vms"]]
        assert names == ["aks-gpu-87654321-vmss_3", "aks-spot-12345678-vmss_1"]
        async with aiohttp.ClientSession() as session:
            first = await events(session, listening["vms"][0]["url"])
            second = await events(session, listening["vms"][1]["url"])
        assert first == second
        assert first["Events"][0]["Resources"] == ["aks-gpu-87654321-vmss_4"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0, err.decode()


def test_cli_lists_scenarios() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spotguard", "simulate-imds", "--list-scenarios"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(SCENARIOS)


def test_cli_rejects_bad_arguments() -> None:
    for args in (["--port", "0", "--scenario", "meteor"], [], ["--port", "0", "--speedup", "0"]):
        result = subprocess.run(
            [sys.executable, "-m", "spotguard", "simulate-imds", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2, args
        assert result.stdout == ""
        assert "simulate-imds" in result.stderr
