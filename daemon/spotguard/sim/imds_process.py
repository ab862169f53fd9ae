"""Run the IMDS simulator in a child process and drive it from the parent.

The demo, the footprint bench and the end-to-end tests keep the simulator out of the process
under test, so it runs as ``spotguard simulate-imds``, one port per VM::

    async with ImdsProcess(["aks-spot-12345678-vmss_0"], stderr=tmp / "imds.log") as imds:
        ...  # point the agent at imds.urls["aks-spot-12345678-vmss_0"]
        event = await imds.control.inject("Preempt", not_before_in=30)

``control`` speaks to the ``/control/`` endpoints (see ``imds_control``) on the first VM's port.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spotguard.sim.child_process import ControlClient, SimulatorProcess
from spotguard.sim.imds_vm import default_vm_name


class ImdsProcessError(RuntimeError):
    pass


class ImdsControl(ControlClient):
    """Client of the simulator's control endpoints (events, faults, request log, state)."""

    prefix = "/control"
    error = ImdsProcessError

    async def inject(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """Add an event (``resources``, ``not_before_in``, ``status``...); returns it."""
        event: dict[str, Any] = await self.call("POST", "/events", {"type": event_type, **fields})
        return event

    async def start_event(self, event_id: str) -> dict[str, Any]:
        event: dict[str, Any] = await self.call("POST", f"/events/{event_id}/start")
        return event

    async def cancel(self, event_id: str) -> dict[str, Any]:
        event: dict[str, Any] = await self.call("DELETE", f"/events/{event_id}")
        return event

    async def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = await self.call("GET", "/events")
        return events

    async def state(self) -> dict[str, Any]:
        state: dict[str, Any] = await self.call("GET", "/state")
        return state

    async def acknowledgements(self, event_id: str | None = None) -> list[dict[str, Any]]:
        acks: list[dict[str, Any]] = (await self.state())["acknowledgements"]
        if event_id is not None:
            acks = [a for a in acks if a["event_id"].lower() == event_id.lower()]
        return acks

    async def add_fault(self, **spec: Any) -> dict[str, Any]:
        """Script a fault: ``kind``, ``status``, ``count``, ``seconds``... (see ``imds_faults``)."""
        fault: dict[str, Any] = await self.call("POST", "/faults", spec)
        return fault

    async def clear_faults(self) -> None:
        await self.call("DELETE", "/faults")

    async def requests(self, vm: str | None = None) -> list[dict[str, Any]]:
        """The request log, of every VM or of ``vm``."""
        params = {"vm": vm} if vm else {}
        records: list[dict[str, Any]] = await self.call("GET", "/requests", **params)
        return records


class ImdsProcess(SimulatorProcess[ImdsControl]):
    """``spotguard simulate-imds`` serving ``vms``, one port each, as a child process, ready
    once ``start`` returns."""

    command = "simulate-imds"
    error = ImdsProcessError

    def __init__(
        self,
        vms: Sequence[str] = (default_vm_name(0),),
        *,
        speedup: float = 1.0,
        log_level: str = "info",
        env: Mapping[str, str] | None = None,
        stderr: Path | None = None,
        python: str = sys.executable,
    ) -> None:
        super().__init__(env=env, stderr=stderr, python=python)
        self.vms = tuple(vms)
        self.speedup = speedup
        self.log_level = log_level

    @property
    def urls(self) -> dict[str, str]:
        """Each VM's IMDS base URL."""
        return {vm["name"]: vm["url"] for vm in self._ready()["vms"]}

    @property
    def url(self) -> str:
        """The first VM's IMDS base URL."""
        return self.urls[self.vms[0]]

    def _args(self) -> list[str]:
        ports = [arg for vm in self.vms for arg in ("--port", "0", "--vm", vm)]
        return [*ports, "--speedup", f"{self.speedup:g}", "--log-level", self.log_level]

    def _connect(self) -> ImdsControl:
        return ImdsControl(self.url)
