"""Run the emulated API server in a child process and drive it from the parent.

kmock is meant for tests, and the demo and end-to-end tests keep the emulator out of the
process under test, so it runs as ``spotguard simulate-cluster`` in its own process::

    async with ClusterProcess(kubeconfig=tmp / "kubeconfig", scenario="spot-node") as cluster:
        await cluster.control.add_fault(match={"verb": "patch", "resource": "nodes"},
                                        status=429, retry_after=1, times=1)
        ...  # point the code under test at cluster.url / cluster.kubeconfig
        log = await cluster.control.requests()

``control`` speaks to the ``/_sim/`` endpoints (see ``cluster_control``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp


class ClusterProcessError(RuntimeError):
    pass


class ClusterControl:
    """Client of the emulator's control endpoints (request log, faults, seeding, settings)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self._base = url.rstrip("/") + "/_sim"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def _call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.request(
            method, self._base + path, json=body, params=params
        ) as resp:
            data = await resp.json()
            if resp.status >= 400:
                raise ClusterProcessError(
                    f"{method} /_sim{path}: {resp.status} {data.get('error')}"
                )
            return data

    async def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Request log entries with a sequence number above ``since``, oldest first."""
        data = await self._call("GET", "/requests", since=str(since))
        entries: list[dict[str, Any]] = data["requests"]
        return entries

    async def mark(self) -> int:
        """Sequence number of the latest request: ``requests(since=mark)`` is what follows."""
        data = await self._call("GET", "/requests", since=str(2**62))
        return int(data["next"]) - 1

    async def clear_requests(self) -> None:
        await self._call("DELETE", "/requests")

    async def add_fault(self, **spec: Any) -> dict[str, Any]:
        """Script a fault: ``match={...}``, ``status``, ``retry_after``, ``delay``, ``drop``,
        ``after``, ``times``, ``message`` (see ``kube_faults.parse_rule``)."""
        rule: dict[str, Any] = await self._call("POST", "/faults", spec)
        return rule

    async def faults(self) -> list[dict[str, Any]]:
        data = await self._call("GET", "/faults")
        rules: list[dict[str, Any]] = data["faults"]
        return rules

    async def remove_fault(self, rule_id: int) -> None:
        await self._call("DELETE", f"/faults/{rule_id}")

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/faults")

    async def seed(self, *objects: Mapping[str, Any]) -> list[dict[str, Any]]:
        data = await self._call("POST", "/objects", {"objects": list(objects)})
        created: list[dict[str, Any]] = data["objects"]
        return created

    async def settings(self) -> dict[str, Any]:
        values: dict[str, Any] = await self._call("GET", "/settings")
        return values

    async def update_settings(self, **values: Any) -> dict[str, Any]:
        updated: dict[str, Any] = await self._call("PATCH", "/settings", values)
        return updated

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class ClusterProcess:
    """``spotguard simulate-cluster`` as a child process, ready once ``start`` returns."""

    def __init__(
        self,
        *,
        kubeconfig: Path,
        scenario: str = "empty",
        port: int = 0,
        env: Mapping[str, str] | None = None,
        stderr: Path | None = None,
        python: str = sys.executable,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.scenario = scenario
        self._port = port
        self._env = dict(os.environ if env is None else env)
        self._stderr_path = stderr
        self._python = python
        self._process: asyncio.subprocess.Process | None = None
        self._url = ""
        self._control: ClusterControl | None = None

    @property
    def url(self) -> str:
        if not self._url:
            raise ClusterProcessError("the emulator is not running")
        return self._url

    @property
    def control(self) -> ClusterControl:
        if self._control is None:
            raise ClusterProcessError("the emulator is not running")
        return self._control

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self, timeout: float = 20.0) -> Self:
        command = [
            self._python,
            "-m",
            "spotguard",
            "simulate-cluster",
            "--port",
            str(self._port),
            "--kubeconfig",
            str(self.kubeconfig),
            "--scenario",
            self.scenario,
        ]
        stderr = self._stderr_path.open("ab") if self._stderr_path else None
        try:
            self._process = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=stderr, env=self._env
            )
        finally:
            if stderr is not None:
                stderr.close()
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                line = await self._process.stdout.readline()
        except TimeoutError:
            await self.stop()
            raise ClusterProcessError(f"simulate-cluster did not start within {timeout}s") from None
        if not line:
            code = await self._process.wait()
            raise ClusterProcessError(f"simulate-cluster exited with code {code} before listening")
        ready = json.loads(line)
        self._url = ready["url"]
        self._control = ClusterControl(self._url)
        return self

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; returns the exit code (SIGKILL after ``timeout``)."""
        if self._control is not None:
            await self._control.close()
        process = self._process
        if process is None:
            return 0
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        self._url = ""
        return process.returncode if process.returncode is not None else -1

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
