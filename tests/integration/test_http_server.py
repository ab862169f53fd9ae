"""/metrics, /healthz and /readyz over real HTTP on 127.0.0.1, the probes' inputs controlled."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from spotguard.kube.client import connect
from spotguard.observability.health import Health, api_version_check
from spotguard.observability.http import HttpServer, serve_http, split_host_port
from spotguard.observability.metrics import Metrics
from spotguard.sim.cluster_process import ClusterProcess


@dataclass
class Knobs:
    """What the composition root would wire in: task state, poller, API server."""

    tasks_running: bool = True
    last_success: float | None = None
    api: str = "ok"  # ok | false | raise | hang
    api_calls: int = 0
    hang: asyncio.Event = field(default_factory=asyncio.Event)

    async def api_check(self) -> bool:
        self.api_calls += 1
        if self.api == "raise":
            raise ConnectionRefusedError("connection refused by 127.0.0.1:6443")
        if self.api == "hang":
            await self.hang.wait()
        return self.api != "false"


@dataclass
class Agent:
    knobs: Knobs
    health: Health
    metrics: Metrics
    server: HttpServer
    http: aiohttp.ClientSession | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    async def get(self, path: str, **headers: str) -> tuple[int, str, str]:
        assert self.http is not None
        async with self.http.get(self.url(path), headers=headers) as response:
            return response.status, response.content_type, await response.text()

    def ready(self) -> None:
        """Every readiness input passing."""
        self.health.identity_resolved = True
        self.knobs.last_success = asyncio.get_running_loop().time()


def build(
    knobs: Knobs,
    *,
    blind_after: float = 30.0,
    api_cache_for: float = 0.0,
    api_check: Callable[[], Awaitable[bool]] | None = None,
    api_timeout: float = 0.2,
) -> Agent:
    health = Health(
        blind_after=blind_after,
        api_check=api_check or knobs.api_check,
        api_timeout=api_timeout,
        api_cache_for=api_cache_for,
    )
    health.tasks_running = lambda: knobs.tasks_running
    health.imds_last_success = lambda: knobs.last_success
    metrics = Metrics(CollectorRegistry())
    metrics.track_imds_blind(health.imds_blind)
    server = HttpServer(address="127.0.0.1:0", registry=metrics.registry, health=health)
    return Agent(knobs, health, metrics, server)


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    built = build(Knobs())
    async with built.server, aiohttp.ClientSession() as http:
        built.http = http
        yield built


async def test_metrics_serves_the_catalogue_in_the_prometheus_text_format(agent: Agent) -> None:
    agent.metrics.action("cordon", "success")
    status, content_type, body = await agent.get("/metrics")
    assert status == 200
    assert content_type == "text/plain"
    parsed = {f.name: f for f in text_string_to_metric_families(body)}
    assert parsed["spotguard_actions"].type == "counter"
    values = {
        (s.labels["action"], s.labels["outcome"]): s.value
        for s in parsed["spotguard_actions"].samples
        if s.name == "spotguard_actions_total"
    }
    assert values[("cordon", "success")] == 1.0
    assert values[("uncordon", "skipped")] == 0.0
    assert parsed["spotguard_imds_blind"].samples[0].value == 0.0


async def test_metrics_negotiates_openmetrics_when_asked(agent: Agent) -> None:
    status, content_type, body = await agent.get(
        "/metrics", Accept="application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    assert status == 200
    assert content_type == "application/openmetrics-text"
    assert body.endswith("# EOF\n")
    names = {f.name for f in parse_openmetrics(body)}
    assert {"spotguard_notices", "spotguard_active_notices", "spotguard_imds_blind"} <= names


async def test_metrics_are_gzipped_when_the_scraper_accepts_it(agent: Agent) -> None:
    assert agent.http is not None
    async with agent.http.get(
        agent.url("/metrics"), headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    ) as response:
        assert response.headers["Content-Encoding"] == "gzip"


async def test_before_anything_is_wired_the_agent_is_live_and_not_ready() -> None:
    # What the composition root has right after start: a Health with only its defaults.
    async def answers() -> bool:
        return True

    health = Health(blind_after=30.0, api_check=answers)
    async with (
        serve_http(address="127.0.0.1:0", registry=CollectorRegistry(), health=health) as server,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{server.port}"
        async with http.get(base + "/healthz") as response:
            assert response.status == 200
        async with http.get(base + "/readyz") as response:
            assert response.status == 503
            identity, api, imds = (await response.text()).splitlines()
            assert identity == "identity: not resolved yet (waiting for IMDS / the node)"
            assert api == "api: ok"
            assert re.fullmatch(r"imds: no answer yet \(\d+s\)", imds), imds


async def test_healthz_is_200_while_tasks_run_and_503_when_not(agent: Agent) -> None:
    assert await agent.get("/healthz") == (200, "text/plain", "tasks: ok\n")
    agent.knobs.tasks_running = False
    assert await agent.get("/healthz") == (503, "text/plain", "tasks: not running\n")


async def test_healthz_stays_200_while_imds_is_blind_and_the_api_is_down(agent: Agent) -> None:
    agent.knobs.api = "raise"
    agent.knobs.last_success = asyncio.get_running_loop().time() - 3600
    assert (await agent.get("/healthz"))[0] == 200
    assert (await agent.get("/readyz"))[0] == 503


async def test_readyz_is_200_when_every_check_passes(agent: Agent) -> None:
    agent.ready()
    status, _, body = await agent.get("/readyz")
    assert (status, body) == (200, "identity: ok\napi: ok\nimds: ok\n")


async def test_readyz_names_unresolved_identity(agent: Agent) -> None:
    agent.ready()
    agent.health.identity_resolved = False
    status, _, body = await agent.get("/readyz")
    assert status == 503
    assert body.splitlines() == [
        "identity: not resolved yet (waiting for IMDS / the node)",
        "api: ok",
        "imds: ok",
    ]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("false", "api: not answering"),
        ("raise", "api: connection refused by 127.0.0.1:6443"),
        ("hang", "api: no answer within 0.2s"),
    ],
)
async def test_readyz_names_an_api_server_that_does_not_answer(
    agent: Agent, mode: str, reason: str
) -> None:
    agent.ready()
    agent.knobs.api = mode
    status, _, body = await agent.get("/readyz")
    assert status == 503
    assert body.splitlines() == ["identity: ok", reason, "imds: ok"]


async def test_readyz_says_imds_has_not_answered_yet(agent: Agent) -> None:
    agent.ready()
    agent.knobs.last_success = None
    status, _, body = await agent.get("/readyz")
    assert status == 503
    assert re.fullmatch(r"imds: no answer yet \(\d+s\)", body.splitlines()[2])


async def test_readyz_and_the_blind_gauge_flip_after_the_threshold() -> None:
    knobs = Knobs()
    agent = build(knobs, blind_after=0.2)
    async with agent.server, aiohttp.ClientSession() as http:
        agent.http = http
        agent.ready()
        assert (await agent.get("/readyz"))[0] == 200
        assert agent.metrics.registry.get_sample_value("spotguard_imds_blind") == 0.0

        await asyncio.sleep(0.3)  # no answer from IMDS for longer than the threshold
        status, _, body = await agent.get("/readyz")
        assert status == 503
        imds = body.splitlines()[2]
        assert re.fullmatch(r"imds: blind for \d+s \(threshold 0\.2s\)", imds), imds
        _, _, text = await agent.get("/metrics")
        blind = {f.name: f for f in text_string_to_metric_families(text)}["spotguard_imds_blind"]
        assert blind.samples[0].value == 1.0

        knobs.last_success = asyncio.get_running_loop().time()  # IMDS answers again
        assert (await agent.get("/readyz"))[0] == 200
        assert agent.metrics.registry.get_sample_value("spotguard_imds_blind") == 0.0


async def test_the_blind_reason_reports_seconds_and_threshold() -> None:
    knobs = Knobs()
    agent = build(knobs, blind_after=30.0)
    async with agent.server, aiohttp.ClientSession() as http:
        agent.http = http
        agent.ready()
        knobs.last_success = asyncio.get_running_loop().time() - 42.2
        _, _, body = await agent.get("/readyz")
        assert "imds: blind for 42s (threshold 30s)" in body.splitlines()


async def test_concurrent_probes_share_one_cached_api_check() -> None:
    knobs = Knobs()
    agent = build(knobs, api_cache_for=60.0)
    async with agent.server, aiohttp.ClientSession() as http:
        agent.http = http
        agent.ready()
        results = await asyncio.gather(*(agent.get("/readyz") for _ in range(10)))
        assert {r[0] for r in results} == {200}
        assert knobs.api_calls == 1
        knobs.api = "false"  # still cached: the next probe does not ask again
        assert (await agent.get("/readyz"))[0] == 200
        assert knobs.api_calls == 1


async def test_unknown_paths_are_404_and_other_methods_405(agent: Agent) -> None:
    assert agent.http is not None
    for path in ("/", "/metrics/", "/health", "/../etc/passwd"):
        assert (await agent.get(path))[0] == 404, path
    for method in ("POST", "PUT", "DELETE"):
        async with agent.http.request(method, agent.url("/metrics")) as response:
            assert response.status == 405
    async with agent.http.head(agent.url("/healthz")) as response:
        assert response.status == 200


async def _raw(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_garbage_and_huge_headers_get_an_error_and_the_server_keeps_serving(
    agent: Agent,
) -> None:
    garbage = await _raw(agent.server.port, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
    assert garbage.split(b" ", 2)[1] == b"400"
    huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    answer = await _raw(agent.server.port, huge)
    assert answer.split(b" ", 2)[1] in (b"400", b"431")
    assert (await agent.get("/healthz"))[0] == 200


async def test_run_serves_until_cancelled_and_then_frees_the_port() -> None:
    agent = build(Knobs())
    task = asyncio.create_task(agent.server.run())
    async with aiohttp.ClientSession() as http:
        agent.http = http
        for _ in range(100):
            await asyncio.sleep(0.01)
            if agent.server.listening:
                break
        port = agent.server.port
        assert (await agent.get("/healthz"))[0] == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{port}/healthz")


async def test_a_busy_port_fails_start_with_oserror() -> None:
    first = build(Knobs())
    async with first.server:
        second = HttpServer(
            address=f"127.0.0.1:{first.server.port}",
            registry=CollectorRegistry(),
            health=first.health,
        )
        with pytest.raises(OSError):  # noqa: PT011
            await second.start()


async def test_readyz_follows_the_real_api_server_through_kube_client(
    cluster: ClusterProcess,
) -> None:
    kube = await connect(kubeconfig=str(cluster.kubeconfig), timeout=2)
    try:
        # a generous bound: the emulator is another process on a possibly busy machine
        agent = build(Knobs(), api_check=api_version_check(kube), api_timeout=0.5)
        async with agent.server, aiohttp.ClientSession() as http:
            agent.http = http
            agent.ready()
            assert await agent.get("/readyz") == (
                200,
                "text/plain",
                "identity: ok\napi: ok\nimds: ok\n",
            )

            await cluster.control.add_fault(match={}, status=503, message="etcd is down")
            status, _, body = await agent.get("/readyz")
            assert status == 503
            assert body.splitlines()[1] == "api: 503 ServiceUnavailable: etcd is down"

            await cluster.control.clear_faults()
            await cluster.control.add_fault(match={}, delay=2.0)
            status, _, body = await agent.get("/readyz")
            assert (status, body.splitlines()[1]) == (503, "api: no answer within 0.5s")

            await cluster.control.clear_faults()
            assert (await agent.get("/readyz"))[0] == 200
            requests = [r for r in await cluster.control.requests() if r["path"] == "/version"]
            # a non-resource read: every identity may make it (system:public-info-viewer)
            assert {(r["verb"], r["resource_request"]) for r in requests} == {("get", False)}
    finally:
        await kube.close()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::]:9464", ("::", 9464)),
    ],
)
def test_split_host_port(address: str, expected: tuple[str, int]) -> None:
    assert split_host_port(address) == expected


def test_split_host_port_refuses_a_missing_port() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_host_port("0.0.0.0")
