"""``spotguard demo``: a scripted Preempt on the IMDS simulator, watched as the agent sees it.

Starts the simulator as a child process, runs the real ``watch`` pipeline against it over HTTP,
prints a readable timeline beside each JSON line, and exits 0 once the preemption has been seen
through to its end (the event gone after Started), 1 if that did not happen in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import datetime
from typing import Any, TextIO

from pydantic import AnyHttpUrl

from spotguard.app import watch
from spotguard.clock import SystemClock
from spotguard.config import Settings
from spotguard.model import ChangeType, Kind, NoticeChange

#: Beyond the notice: the simulator's impact time and start-up, generously.
DEMO_SLACK = 90.0
CHILD_START_TIMEOUT = 30.0


async def start_child(*args: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Start ``python -m spotguard <args>`` and wait for its one JSON "listening" line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spotguard", *args, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), CHILD_START_TIMEOUT)
        ready: dict[str, Any] = json.loads(line)
    except (TimeoutError, json.JSONDecodeError):
        await stop_child(proc)
        raise RuntimeError(f"spotguard {args[0]} did not start") from None
    return proc, ready


async def stop_child(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _describe(change: NoticeChange, now: datetime) -> str:
    notice = change.notice
    what = f"{notice.kind.value} {notice.event_id[:8]}"
    if change.change is ChangeType.NEW:
        left = (notice.deadline - now).total_seconds()
        return f"notice seen: {what} {notice.status.value}, deadline in {left:.1f}s"
    if change.change is ChangeType.UPDATED:
        return f"notice updated: {what} now {notice.status.value}"
    return f"notice gone: {what} ({'cancelled' if change.cancelled else 'completed'})"


async def run_demo(
    settings: Settings, *, out: TextIO, speedup: float = 1.0, notice: float = 30.0
) -> int:
    clock = SystemClock()
    proc, ready = await start_child(
        "simulate-imds",
        "--port",
        "0",
        "--scenario",
        "preempt",
        "--speedup",
        str(speedup),
        "--notice",
        str(notice),
        "--log-level",
        "warning",
    )
    try:
        url = ready["vms"][0]["url"]
        out.write(f"IMDS simulator on {url}: a Preempt with {notice:g} s notice is on its way\n")
        settings = settings.model_copy(update={"imds_url": AnyHttpUrl(url)})
        stop = asyncio.Event()
        started = asyncio.get_running_loop().time()
        seen: list[NoticeChange] = []

        def on_change(change: NoticeChange) -> None:
            seen.append(change)
            elapsed = asyncio.get_running_loop().time() - started
            out.write(f"  t+{elapsed:5.1f}s  {_describe(change, clock.now())}\n")
            if change.change is ChangeType.GONE and change.notice.kind is Kind.PREEMPT:
                stop.set()

        try:
            async with asyncio.timeout(notice + DEMO_SLACK):
                await watch(settings, out=out, clock=clock, stop=stop, on_change=on_change)
        except TimeoutError:
            out.write("demo: the preemption did not run its course in time\n")
            return 1
        completed = any(c.change is ChangeType.GONE and not c.cancelled for c in seen)
        out.write("demo: preemption seen from notice to completion\n" if completed else "")
        return 0 if completed else 1
    finally:
        await stop_child(proc)
