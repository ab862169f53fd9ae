"""``python -m spotguard <command>`` as a child process: start, read, wait for, stop.

What ``ClusterProcess``, ``ImdsProcess``, the demo, the footprint bench and the end-to-end
harness share: a clean environment, the JSON "listening" line a simulator prints once it serves,
a port for the agent's HTTP server, ``/readyz``, and stopping (SIGTERM, then SIGKILL).
``SimulatorProcess`` and ``ControlClient`` are the common part of the two simulator drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Generic, Self, TypeVar

import aiohttp

#: ``stdout``/``stderr`` of ``spawn``: a file to append to, ``PIPE``, ``DEVNULL`` or inherited.
Output = Path | int | None


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``SPOTGUARD_*``, plus ``extra``.

    The caller's settings are for the caller: a child is configured only by what it is given.
    """
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SPOTGUARD_")}
    env.update(extra or {})
    return env


def free_port() -> int:
    """A port nobody listens on right now (the agent takes no port 0; the race is acceptable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def spawn(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdout: Output = asyncio.subprocess.PIPE,
    stderr: Output = None,
    python: str = sys.executable,
) -> asyncio.subprocess.Process:
    """``python -m spotguard <args>``, stdin closed; ``env`` defaults to ``child_env()``."""
    with contextlib.ExitStack() as files:

        def opened(target: Output) -> IO[bytes] | int | None:
            return files.enter_context(target.open("ab")) if isinstance(target, Path) else target

        return await asyncio.create_subprocess_exec(
            python,
            "-m",
            "spotguard",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=opened(stdout),
            stderr=opened(stderr),
            env=child_env() if env is None else dict(env),
        )


async def read_listening(
    proc: asyncio.subprocess.Process,
    what: str,
    timeout: float,
    error: type[Exception] = RuntimeError,
) -> dict[str, Any]:
    """The JSON line a simulator prints on stdout once it serves; stops it if none comes."""
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(timeout):
            line = await proc.stdout.readline()
    except TimeoutError:
        await stop_process(proc)
        raise error(f"{what} did not start within {timeout:g}s") from None
    if not line:
        raise error(f"{what} exited with code {await proc.wait()} before listening")
    try:
        ready: dict[str, Any] = json.loads(line)
    except json.JSONDecodeError:
        await stop_process(proc)
        raise error(f"{what} printed {line[:200]!r}, not its listening line") from None
    return ready


async def wait_ready(proc: asyncio.subprocess.Process, url: str, timeout: float) -> None:
    """Until ``GET <url>/readyz`` answers 200; RuntimeError if the agent exits or time is up."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    call = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=call, trust_env=False) as session:
        while loop.time() < until:
            if proc.returncode is not None:
                raise RuntimeError(f"the agent exited with code {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the agent was not ready within {timeout:g}s")


async def stop_process(
    proc: asyncio.subprocess.Process, timeout: float = 10.0, sig: int = signal.SIGTERM
) -> int:
    """Send ``sig`` (unless it has exited) and wait; SIGKILL after ``timeout``. The exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


class ControlClient:
    """JSON over HTTP to a simulator's control endpoints (``<url><prefix>/...``)."""

    prefix: ClassVar[str] = ""
    error: ClassVar[type[Exception]] = RuntimeError

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self._base = url.rstrip("/") + self.prefix
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        """``method <prefix><path>``: the answer's JSON; ``error`` unless it is a 2xx."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        async with self._session.request(
            method, self._base + path, json=body, params=params
        ) as resp:
            data = await resp.json()
            if resp.status >= 300:
                detail = data.get("error", data) if isinstance(data, dict) else data
                raise self.error(f"{method} {self.prefix}{path}: {resp.status} {detail}")
            return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


C = TypeVar("C", bound=ControlClient)


class SimulatorProcess(Generic[C]):
    """``spotguard <command>`` as a child process, ready once ``start`` returns: it has printed
    its listening line (``listening``) and ``control`` (a ``C``) speaks to it."""

    command: ClassVar[str]
    error: ClassVar[type[Exception]] = RuntimeError

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        stderr: Path | None = None,
        python: str = sys.executable,
    ) -> None:
        self._env = dict(os.environ if env is None else env)
        self._stderr_path = stderr
        self._python = python
        self._process: asyncio.subprocess.Process | None = None
        self._control: C | None = None
        #: the simulator's listening line, while it runs
        self.listening: dict[str, Any] = {}

    def _args(self) -> list[str]:
        """The command line after ``spotguard <command>``."""
        raise NotImplementedError

    def _connect(self) -> C:
        """The control client, once ``listening`` is known."""
        raise NotImplementedError

    def _ready(self) -> dict[str, Any]:
        if not self.listening:
            raise self.error(f"{self.command} is not running")
        return self.listening

    @property
    def control(self) -> C:
        if self._control is None:
            raise self.error(f"{self.command} is not running")
        return self._control

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self, timeout: float = 20.0) -> Self:
        self._process = await spawn(
            self.command,
            *self._args(),
            env=self._env,
            stderr=self._stderr_path,
            python=self._python,
        )
        self.listening = await read_listening(self._process, self.command, timeout, self.error)
        self._control = self._connect()
        return self

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; returns the exit code (SIGKILL after ``timeout``)."""
        if self._control is not None:
            await self._control.close()
        if self._process is None:
            return 0
        code = await stop_process(self._process, timeout)
        self.listening = {}
        return code

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
