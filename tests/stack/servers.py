"""The monitoring half of the real stack: Debian's Prometheus and Alertmanager as child processes,
and the two small HTTP servers they talk to (a webhook receiver standing in for the paging and
chat integrations, and a kube-state-metrics stand-in). Everything listens on 127.0.0.1 only.

The binaries are required: a missing one fails the test (``tests.monitoring.tool``), never skips
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from aiohttp import web

from spotguard.sim.child_process import free_port
from tests.monitoring import tool

T = TypeVar("T")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CALL_TIMEOUT = aiohttp.ClientTimeout(total=10)
LOG_TAIL_BYTES = 4000


async def wait_until(
    predicate: Callable[[], Awaitable[T | None] | T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
        except (aiohttp.ClientError, TimeoutError, AssertionError) as exc:
            last_error = exc
        if loop.time() >= until:
            message = f"timed out after {timeout:g}s waiting for {what}"
            if last_error is not None:
                message += f" (last error: {last_error!r})"
            if details is not None:
                message += "\n" + details()
            raise AssertionError(message)
        await asyncio.sleep(interval)


def parse_go_time(value: str) -> float:
    """A Go RFC 3339 time (nanoseconds, ``Z``) -> POSIX seconds."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


# --- Prometheus and Alertmanager ------------------------------------------------------------


class Server:
    """A Debian binary on a free 127.0.0.1 port, with its config, data and log in ``workdir``."""

    binary: str
    package: str
    name: str

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = workdir / "config.yml"
        self.data = workdir / "data"
        self.log_path = workdir / "log"
        self._proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        raise NotImplementedError

    async def start(self, config: Mapping[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        path = tool(self.binary, self.package)
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                path,
                *self.args(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._session = aiohttp.ClientSession(timeout=CALL_TIMEOUT, trust_env=False)
        await wait_until(
            self._ready, timeout=START_TIMEOUT, what=f"{self.name} /-/ready", details=self.log_tail
        )

    async def _ready(self) -> bool:
        assert self._proc is not None
        assert self._proc.returncode is None, f"{self.name} exited:\n{self.log_tail()}"
        with contextlib.suppress(aiohttp.ClientError):
            async with self.session.get(self.url + "/-/ready") as resp:
                return resp.status == 200
        return False

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, f"{self.name} is not running"
        return self._session

    def log_tail(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name} log ({self.log_path}) ---\n{text[-LOG_TAIL_BYTES:]}"

    async def get_json(self, path: str, **params: str) -> Any:
        async with self.session.get(self.url + path, params=params) as resp:
            body = await resp.text()
            assert resp.status == 200, f"GET {path} {params}: {resp.status} {body[:500]}"
            return json.loads(body)

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._session is not None:
            await self._session.close()
            self._session = None


class Prometheus(Server):
    binary = "prometheus"
    package = "prometheus"
    name = "Prometheus"

    def args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=info",
        ]

    async def api(self, path: str, **params: str) -> Any:
        answer = await self.get_json("/api/v1/" + path, **params)
        assert answer["status"] == "success", answer
        return answer["data"]

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = await self.api("query", **params)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def value(self, expr: str, at: float | None = None) -> float | None:
        """The value of a query that returns one series (None when it returns none)."""
        result = await self.query(expr, at)
        assert len(result) <= 1, f"{expr}: {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    async def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        data = await self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}"
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    async def target(self, job: str, **labels: str) -> dict[str, Any]:
        data = await self.api("targets", state="active")
        found = [
            t
            for t in data["activeTargets"]
            if t["labels"].get("job") == job
            and all(t["labels"].get(k) == v for k, v in labels.items())
        ]
        assert len(found) == 1, f"{len(found)} active {job} targets with {labels}"
        return found[0]

    async def last_scrape(self, job: str, **labels: str) -> tuple[float | None, str]:
        """When the target was last scraped (None: never) and its health."""
        target = await self.target(job, **labels)
        if target["lastScrape"].startswith("0001-"):
            return None, target["health"]
        return parse_go_time(target["lastScrape"]), target["health"]

    async def alerts(self) -> list[dict[str, Any]]:
        data = await self.api("alerts")
        alerts: list[dict[str, Any]] = data["alerts"]
        return alerts

    async def rule_groups(self) -> list[dict[str, Any]]:
        data = await self.api("rules")
        groups: list[dict[str, Any]] = data["groups"]
        return groups


class Alertmanager(Server):
    binary = "prometheus-alertmanager"
    package = "prometheus-alertmanager"
    name = "Alertmanager"

    def args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Empty: no HA gossip (it would listen on 0.0.0.0:9094).
            "--cluster.listen-address=",
            "--log.level=info",
        ]

    async def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (silenced and inhibited ones too) with ``labels``."""
        matchers = [f'{k}="{v}"' for k, v in labels.items()]
        async with self.session.get(
            self.url + "/api/v2/alerts", params=[("filter", m) for m in matchers]
        ) as resp:
            assert resp.status == 200, await resp.text()
            alerts: list[dict[str, Any]] = await resp.json()
            return alerts


# --- the webhook receiver -------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One webhook POST from Alertmanager (payload version 4)."""

    receiver: str  # the last path segment of the URL it was sent to
    at: float  # wall time it arrived
    payload: dict[str, Any]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.payload["alerts"]
        return alerts

    @property
    def alertnames(self) -> list[str]:
        return sorted(a["labels"]["alertname"] for a in self.alerts)

    def about(self, node: str) -> bool:
        return any(a["labels"].get("node") == node for a in self.alerts)

    def summary(self) -> str:
        labels = self.payload.get("groupLabels")
        return f"{self.receiver} {self.payload.get('status')} {self.alertnames} group {labels}"


class WebhookReceiver:
    """Records every notification Alertmanager sends, receiver by receiver (``POST /<name>``)."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{receiver}", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = _bound_port(self._runner)

    async def _receive(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.notifications.append(
            Notification(receiver=request.match_info["receiver"], at=time.time(), payload=payload)
        )
        return web.Response(status=200)

    def about(self, node: str, receiver: str | None = None) -> list[Notification]:
        return [
            n
            for n in self.notifications
            if n.about(node) and (receiver is None or n.receiver == receiver)
        ]

    def summary(self) -> str:
        lines = [
            f"  {time.strftime('%X', time.localtime(n.at))} {n.summary()}"
            for n in self.notifications
        ]
        return "notifications received:\n" + ("\n".join(lines) or "  (none)")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        return int(address[1])
    raise AssertionError("the server is not listening")


# --- kube-state-metrics ---------------------------------------------------------------------


def kube_state_metrics(nodes: Sequence[Mapping[str, Any]]) -> str:
    """The exposition kube-state-metrics would serve for ``nodes`` (Node objects), limited to the
    series the rules read, started with the allowlist README.md asks for
    (``nodes=[kubernetes.azure.com/scalesetpriority,kubernetes.azure.com/agentpool]``)."""
    allowlist = ("kubernetes.azure.com/scalesetpriority", "kubernetes.azure.com/agentpool")
    lines = [
        "# HELP kube_node_labels Kubernetes labels converted to Prometheus labels.",
        "# TYPE kube_node_labels gauge",
    ]
    for node in nodes:
        name = node["metadata"]["name"]
        labels = node["metadata"].get("labels") or {}
        pairs = [f'node="{name}"'] + [
            f'label_{re.sub(r"[^a-zA-Z0-9_]", "_", key)}="{labels[key]}"'
            for key in allowlist
            if key in labels
        ]
        lines.append(f"kube_node_labels{{{','.join(pairs)}}} 1")
    lines += [
        "# HELP kube_node_spec_taint The taint of a cluster node.",
        "# TYPE kube_node_spec_taint gauge",
    ]
    for node in nodes:
        name = node["metadata"]["name"]
        for taint in (node.get("spec") or {}).get("taints") or []:
            lines.append(
                f'kube_node_spec_taint{{node="{name}",key="{taint["key"]}",'
                f'value="{taint.get("value", "")}",effect="{taint["effect"]}"}} 1'
            )
    lines += [
        "# HELP kube_node_status_condition The condition of a cluster node.",
        "# TYPE kube_node_status_condition gauge",
    ]
    for node in nodes:
        name = node["metadata"]["name"]
        for condition in (node.get("status") or {}).get("conditions") or []:
            for status in ("true", "false", "unknown"):
                value = 1 if condition["status"].lower() == status else 0
                lines.append(
                    f'kube_node_status_condition{{node="{name}",condition="{condition["type"]}",'
                    f'status="{status}"}} {value}'
                )
    return "\n".join(lines) + "\n"


# --- a pipeline step's checkpoint endpoint ----------------------------------------------------


@dataclass
class CheckpointEndpoint:
    """What a pipeline step serves (DESIGN.md, Contracts -> Pods): ``POST /checkpoint`` with the
    namespace's bearer token saves and answers 200 ``{location, bytes}``; anything else is 401."""

    token: str
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    _runner: web.AppRunner | None = field(default=None, repr=False)

    async def start(self) -> None:
        async def checkpoint(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                self.refused += 1
                return web.json_response({"error": "unauthorized"}, status=401)
            body = await request.json()
            self.requests.append({**body, "_at": time.time()})
            location = f"az://checkpoints/{body['node']}/{body['event_id']}"
            return web.json_response({"location": location, "bytes": 4096})

        app = web.Application()
        app.router.add_post("/checkpoint", checkpoint)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = _bound_port(self._runner)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
