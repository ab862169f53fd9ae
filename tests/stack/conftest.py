"""The real stack, shared by every test of this package (started once, stopped after the last),
and its scenarios, all started at once when the stack is up (see scenarios.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.stack.scenarios import SCENARIOS, Outcome
from tests.stack.stack import Stack, real_stack

#: The longest scenario takes about 30 s; a loaded machine gets some margin.
SCENARIO_TIMEOUT = 100.0


class Scenarios:
    def __init__(self, stack: Stack) -> None:
        self._tasks = {
            name: asyncio.create_task(run(stack), name=f"scenario-{name}")
            for name, run in SCENARIOS.items()
        }

    async def outcome(self, name: str) -> Outcome:
        """The scenario's outcome; its failure, raised here."""
        return await asyncio.wait_for(asyncio.shield(self._tasks[name]), SCENARIO_TIMEOUT)

    async def settled(self) -> None:
        """Until every scenario has ended, however it ended."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait(self._tasks.values(), timeout=SCENARIO_TIMEOUT)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("stack")
    async with real_stack(tmp) as running:
        yield running


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def scenarios(stack: Stack) -> AsyncIterator[Scenarios]:
    started = Scenarios(stack)
    try:
        yield started
    finally:
        await started.close()
