"""The agent's HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` on one port.

Started and stopped by the composition root (``async with serve_http(...)``, ``start``/``stop``,
or ``run`` as a named task); it installs no signal handlers of its own. Probe bodies are plain
lines, one per check (``imds: blind for 42s (threshold 30s)``), readable with curl and in
``kubectl describe``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Self

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from spotguard.observability.health import Check, Health

__all__ = ["Health", "HttpServer", "serve_http", "split_host_port"]

#: Scrapes and probes finish in milliseconds; a stopping agent should not wait longer for them.
SHUTDOWN_TIMEOUT = 1.0


def split_host_port(address: str) -> tuple[str, int]:
    """``0.0.0.0:9464``, ``[::]:9464`` → host and port."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, not {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _lines(checks: list[Check]) -> str:
    return "".join(check.line() + "\n" for check in checks)


class HttpServer:
    def __init__(
        self,
        *,
        address: str,
        registry: CollectorRegistry,
        health: Health,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    ) -> None:
        self._host, self._port = split_host_port(address)
        self._health = health
        app = web.Application()
        # prometheus_client's handler negotiates OpenMetrics vs text and gzip from the request.
        app.router.add_get("/metrics", make_aiohttp_handler(registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        # Probes and scrapes every few seconds would drown the log: no access log.
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout
        )
        self._site: web.TCPSite | None = None

    @property
    def listening(self) -> bool:
        return self._site is not None

    @property
    def port(self) -> int:
        """The bound port (the real one when the address asked for port 0)."""
        if self._site is None:
            raise RuntimeError("the HTTP server is not started")
        port: int = self._runner.addresses[0][1]
        return port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self._site = site

    async def stop(self) -> None:
        await self._runner.cleanup()
        self._site = None

    async def run(self) -> None:
        """Serve until cancelled (for a TaskGroup task)."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _healthz(self, request: web.Request) -> web.Response:
        check = self._health.live()
        return web.Response(status=200 if check.ok else 503, text=_lines([check]))

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = await self._health.ready()
        ok = all(check.ok for check in checks)
        return web.Response(status=200 if ok else 503, text=_lines(checks))


@asynccontextmanager
async def serve_http(
    *, address: str, registry: CollectorRegistry, health: Health
) -> AsyncIterator[HttpServer]:
    """Serve for the duration of the ``async with`` block."""
    async with HttpServer(address=address, registry=registry, health=health) as server:
        yield server
