"""Run the emulated API server in a child process and drive it from the parent.

kmock is meant for tests, and the demo and end-to-end tests keep the emulator out of the
process under test, so it runs as ``spotguard simulate-cluster`` in its own process::

    async with ClusterProcess(kubeconfig=tmp / "kubeconfig", scenario="spot-node") as cluster:
        await cluster.control.add_fault(match={"verb": "patch", "resource": "nodes"},
                                        status=429, retry_after=1, times=1)
        ...  # point the code under test at cluster.url / cluster.kubeconfig
        log = await cluster.control.requests()

``control`` speaks to the ``/_sim/`` endpoints (see ``cluster_control``). With
``request_log=path`` the emulator also writes its whole request log to ``path`` (JSON lines) when
it stops cleanly.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spotguard.sim.child_process import ControlClient, SimulatorProcess


class ClusterProcessError(RuntimeError):
    pass


class ClusterControl(ControlClient):
    """Client of the emulator's control endpoints (request log, faults, seeding, settings)."""

    prefix = "/_sim"
    error = ClusterProcessError

    async def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Request log entries with a sequence number above ``since``, oldest first."""
        data = await self.call("GET", "/requests", since=str(since))
        entries: list[dict[str, Any]] = data["requests"]
        return entries

    async def mark(self) -> int:
        """Sequence number of the latest request: ``requests(since=mark)`` is what follows."""
        data = await self.call("GET", "/requests", since=str(2**62))
        return int(data["next"]) - 1

    async def clear_requests(self) -> None:
        await self.call("DELETE", "/requests")

    async def add_fault(self, **spec: Any) -> dict[str, Any]:
        """Script a fault: ``match={...}``, ``status``, ``retry_after``, ``delay``, ``drop``,
        ``after``, ``times``, ``message`` (see ``kube_faults.parse_rule``)."""
        rule: dict[str, Any] = await self.call("POST", "/faults", spec)
        return rule

    async def faults(self) -> list[dict[str, Any]]:
        data = await self.call("GET", "/faults")
        rules: list[dict[str, Any]] = data["faults"]
        return rules

    async def remove_fault(self, rule_id: int) -> None:
        await self.call("DELETE", f"/faults/{rule_id}")

    async def clear_faults(self) -> None:
        await self.call("DELETE", "/faults")

    async def seed(self, *objects: Mapping[str, Any]) -> list[dict[str, Any]]:
        data = await self.call("POST", "/objects", {"objects": list(objects)})
        created: list[dict[str, Any]] = data["objects"]
        return created

    async def settings(self) -> dict[str, Any]:
        values: dict[str, Any] = await self.call("GET", "/settings")
        return values

    async def update_settings(self, **values: Any) -> dict[str, Any]:
        updated: dict[str, Any] = await self.call("PATCH", "/settings", values)
        return updated


class ClusterProcess(SimulatorProcess[ClusterControl]):
    """``spotguard simulate-cluster`` as a child process, ready once ``start`` returns."""

    command = "simulate-cluster"
    error = ClusterProcessError

    def __init__(
        self,
        *,
        kubeconfig: Path,
        scenario: str = "empty",
        port: int = 0,
        env: Mapping[str, str] | None = None,
        stderr: Path | None = None,
        python: str = sys.executable,
        request_log: Path | None = None,
    ) -> None:
        super().__init__(env=env, stderr=stderr, python=python)
        self.kubeconfig = kubeconfig
        self.scenario = scenario
        #: where the emulator writes its whole request log (JSON lines) as it stops
        self.request_log = request_log
        self._port = port

    @property
    def url(self) -> str:
        return str(self._ready()["url"])

    def _args(self) -> list[str]:
        return [
            *("--port", str(self._port), "--kubeconfig", str(self.kubeconfig)),
            *("--scenario", self.scenario),
            *(("--request-log", str(self.request_log)) if self.request_log else ()),
        ]

    def _connect(self) -> ClusterControl:
        return ClusterControl(self.url)
