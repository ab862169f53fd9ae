"""Start spotguard commands as real child processes and read their JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from spotguard.sim.child_process import spawn, stop_process


class Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, timeout: float) -> dict[str, Any]:
        """The next JSON line on stdout; TimeoutError if none comes in time."""
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise EOFError(f"child exited with {await self.proc.wait()}")
        data: dict[str, Any] = json.loads(raw)
        return data

    async def no_line(self, seconds: float) -> None:
        """Assert that nothing is printed for ``seconds``."""
        with contextlib.suppress(TimeoutError):
            line = await self.line(seconds)
            raise AssertionError(f"unexpected output: {line}")


@asynccontextmanager
async def spotguard(*args: str, env: Mapping[str, str] | None = None) -> AsyncIterator[Child]:
    """``python -m spotguard <args>`` with the test environment plus ``env``."""
    proc = await spawn(
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stderr = asyncio.create_task(proc.stderr.read()) if proc.stderr else None
    try:
        yield Child(proc)
    finally:
        await stop_process(proc)
        if stderr is not None:
            await stderr
