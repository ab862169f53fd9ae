"""End-to-end tests: record spotguard's API requests for the exact-RBAC check.

Every e2e test's emulated API servers hand their request logs to ``tests.rbac_recorder`` as they
stop; ``tests/deploy/test_rbac.py`` (run last) compares what the agent and queue mode asked for
with ``deploy/``'s RBAC. See ``tests/rbac_recorder.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from spotguard.sim.cluster_process import ClusterProcess
from tests.e2e.agent_harness import HARNESS_UA
from tests.rbac_recorder import RECORDER


@pytest.fixture(autouse=True)
def record_rbac(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    test = request.node.nodeid
    real_exec = asyncio.create_subprocess_exec
    real_stop = ClusterProcess.stop

    # Which emulator each `spotguard run` / `spotguard queue` child talks to (its KUBECONFIG).
    async def exec_noting(program: Any, *args: Any, **kwargs: Any) -> Any:
        RECORDER.note_spawn((program, *args), kwargs.get("env"))
        return await real_exec(program, *args, **kwargs)

    # An emulator's whole request log, read just before it stops (after the test's spotguard
    # processes have stopped: the harness and the tests stop them first).
    async def stop_recording(self: ClusterProcess, timeout: float = 10.0) -> int:
        if self.listening:
            try:
                entries = await self.control.requests()
            except Exception as exc:  # reported by test_rbac; the emulator must still stop
                RECORDER.errors.append(f"{test}: could not read the request log: {exc!r}")
            else:
                RECORDER.collect(self.kubeconfig, entries, test=test, own_agents=[HARNESS_UA])
        return await real_stop(self, timeout)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", exec_noting)
    monkeypatch.setattr(ClusterProcess, "stop", stop_recording)
