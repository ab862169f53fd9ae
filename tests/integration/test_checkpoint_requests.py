"""The agent's checkpoint requests against real step endpoints and the emulated API server.

Every step here is ``spotguard.step``'s own HTTP endpoint on 127.0.0.1 (the pod IP of the
seeded pods), with a callback standing in for the step's work: answer at once, slowly, with an
error, or never. The pods, Secrets and result annotations live in the emulator.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import structlog
from kubernetes_asyncio import client as k8s
from structlog.testing import capture_logs

from spotguard.checkpoint.protocol import CheckpointRequester, RoundRequest
from spotguard.checkpoint.targets import RESULT_ANNOTATION, Outcome
from spotguard.clock import SystemClock
from spotguard.kube.client import KubeClient
from spotguard.sim.cluster import ClusterEmulator
from spotguard.step.endpoint import CheckpointEndpoint, CheckpointRequest, Respond
from tests.cluster_fixtures import make_pod

NODE = "spot-0"
NS = "kubeflow"
TOKEN = "s3cret-token"

Behaviour = Callable[[CheckpointRequest, Respond], None]


def saves(seconds: float = 0.0, size: int = 1234) -> Behaviour:
    def on_request(request: CheckpointRequest, respond: Respond) -> None:
        time.sleep(seconds)
        respond(200, {"location": f"file:///ckpt/{request.event_id}", "bytes": size})

    return on_request


def answers(status: int, doc: dict[str, Any]) -> Behaviour:
    def on_request(request: CheckpointRequest, respond: Respond) -> None:
        respond(status, doc)

    return on_request


class Steps:
    """Real step endpoints; records every request that reached a callback."""

    def __init__(self) -> None:
        self.endpoints: dict[str, CheckpointEndpoint] = {}
        self.received: dict[str, list[tuple[float, CheckpointRequest]]] = {}
        self._lock = threading.Lock()

    def start(self, name: str, behaviour: Behaviour, *, token: str = TOKEN) -> int:
        def on_request(request: CheckpointRequest, respond: Respond) -> None:
            with self._lock:
                self.received.setdefault(name, []).append((time.monotonic(), request))
            behaviour(request, respond)

        endpoint = CheckpointEndpoint(
            host="127.0.0.1", port=0, path="/checkpoint", token=token, on_request=on_request
        )
        endpoint.start()
        self.endpoints[name] = endpoint
        return endpoint.port

    def stop(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.stop()


@pytest.fixture
def steps() -> Iterator[Steps]:
    s = Steps()
    yield s
    s.stop()


def step_pod(name: str, port: int | str, *, namespace: str = NS, **extra: str) -> dict[str, Any]:
    pod = make_pod(name, namespace=namespace, node=NODE)
    pod["metadata"]["annotations"] = {
        "spotguard.io/checkpoint": "http",
        "spotguard.io/checkpoint-port": str(port),
        **extra,
    }
    pod["status"]["podIP"] = "127.0.0.1"
    return pod


def secret(namespace: str = NS, token: str = TOKEN) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "spotguard-checkpoint", "namespace": namespace},
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def node() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}, "spec": {}}


@asynccontextmanager
async def requester(url: str, *, dry_run: bool = False) -> AsyncIterator[CheckpointRequester]:
    kube = KubeClient(k8s.ApiClient(k8s.Configuration(host=url)), timeout=5)
    http = aiohttp.ClientSession(trust_env=False)
    try:
        yield CheckpointRequester(
            kube=kube,
            http=http,
            clock=SystemClock(),
            dry_run=dry_run,
            api_timeout=2.0,
            log=structlog.get_logger(),
        )
    finally:
        await http.close()
        await kube.close()


def round_request(seconds: float) -> RoundRequest:
    return RoundRequest(
        event_id="evt-1",
        kind="preempt",
        node=NODE,
        deadline=asyncio.get_running_loop().time() + seconds,
        deadline_wall=datetime.now(UTC) + timedelta(seconds=seconds),
    )


async def annotation(emulator: ClusterEmulator, name: str, namespace: str = NS) -> Any:
    url = f"{emulator.url}/api/v1/namespaces/{namespace}/pods/{name}"
    async with aiohttp.ClientSession(trust_env=False) as http, http.get(url) as r:
        pod = await r.json()
    raw = (pod["metadata"].get("annotations") or {}).get(RESULT_ANNOTATION)
    return None if raw is None else json.loads(raw)


async def test_every_step_is_asked_and_its_result_recorded(
    emulator: ClusterEmulator, steps: Steps
) -> None:
    ports = {
        "saver": steps.start("saver", saves(0.2, size=42)),
        "exiting": steps.start("exiting", answers(409, {"error": "exiting"})),
        "failing": steps.start("failing", answers(503, {"error": "disk full"})),
        "strange": steps.start("strange", answers(200, {"hello": 1})),
        "other-token": steps.start("other-token", saves(), token="not-ours"),
    }
    emulator.seed(
        node(),
        secret(),
        *(step_pod(name, port) for name, port in ports.items()),
        make_pod("web", namespace=NS, node=NODE),  # not opted in
        make_pod("elsewhere", namespace=NS, node="spot-1"),
    )
    async with requester(emulator.url) as req:
        request = round_request(10)
        round_ = await req.start(request, structlog.get_logger())
        assert sorted(t.ref.name for t in round_.targets) == sorted(ports)
        results = {r.name: r for r in await round_.wait()}

    assert {n: r.outcome for n, r in results.items()} == {
        "saver": Outcome.SAVED,
        "exiting": Outcome.EXITING,
        "failing": Outcome.NOT_SAVED,
        "strange": Outcome.NOT_SAVED,
        "other-token": Outcome.REFUSED,
    }
    saved = results["saver"]
    assert (saved.location, saved.size, saved.status) == ("file:///ckpt/evt-1", 42, 200)
    assert saved.seconds >= 0.2
    assert results["failing"].error == "disk full"
    assert "location" in results["strange"].error
    # The step got exactly the request DESIGN.md defines.
    (_, got), *more = steps.received["saver"]
    assert more == []
    assert (got.event_id, got.kind, got.node) == ("evt-1", "preempt", NODE)
    assert abs((got.deadline - request.deadline_wall).total_seconds()) < 0.001
    assert "other-token" not in steps.received  # refused before the step saw it

    # Holds: kept for steps that exit by themselves, released for the others.
    holds = {key[1]: hold.released.is_set() for key, hold in round_.holds.items()}
    assert holds == {
        "saver": False,
        "exiting": False,
        "failing": True,
        "strange": True,
        "other-token": True,
    }
    recorded = await annotation(emulator, "saver")
    assert recorded["event_id"] == "evt-1"
    assert recorded["result"] == "saved"
    assert (recorded["location"], recorded["bytes"]) == ("file:///ckpt/evt-1", 42)
    assert (await annotation(emulator, "other-token"))["result"] == "refused"
    assert await annotation(emulator, "web") is None


async def test_a_step_that_does_not_answer_in_time_is_released_at_the_deadline(
    emulator: ClusterEmulator, steps: Steps
) -> None:
    port = steps.start("slow", saves(5.0))
    emulator.seed(node(), secret(), step_pod("slow", port))
    loop = asyncio.get_running_loop()
    async with requester(emulator.url) as req:
        started = loop.time()
        round_ = await req.start(round_request(1.5), structlog.get_logger())
        (result,) = await round_.wait()
        ended = loop.time()
    assert result.outcome is Outcome.TIMEOUT
    assert 1.3 <= ended - started < 2.0
    assert round_.holds[(NS, "slow")].released.is_set()
    assert (await annotation(emulator, "slow"))["result"] == "timeout"


async def test_bad_configuration_is_reported_per_pod_and_never_sent(
    emulator: ClusterEmulator, steps: Steps
) -> None:
    port = steps.start("fine", saves())
    emulator.seed(
        node(),
        secret(),  # only in NS
        step_pod("no-secret", port, namespace="team-b"),
        step_pod("bad-port", "http"),
        step_pod("bad-path", port, **{"spotguard.io/checkpoint-path": "checkpoint?x=1"}),
        step_pod("nobody-home", free_port_number()),
    )
    async with requester(emulator.url) as req:
        round_ = await req.start(round_request(5), structlog.get_logger())
        results = {r.name: r for r in await round_.wait()}
    assert results["no-secret"].outcome is Outcome.NO_TOKEN
    assert "team-b/spotguard-checkpoint not found" in results["no-secret"].error
    assert results["bad-port"].outcome is Outcome.INVALID
    assert "checkpoint-port" in results["bad-port"].error
    assert results["bad-path"].outcome is Outcome.INVALID
    assert results["nobody-home"].outcome is Outcome.UNREACHABLE
    assert steps.received == {}
    # A pod whose annotations are unusable gets no hold: nothing will make it exit by itself.
    assert (NS, "bad-port") not in round_.holds
    assert round_.holds[("team-b", "no-secret")].released.is_set()


async def test_dry_run_sends_nothing_and_writes_nothing(
    emulator: ClusterEmulator, steps: Steps
) -> None:
    port = steps.start("saver", saves())
    emulator.seed(node(), secret(), step_pod("saver", port))
    async with requester(emulator.url, dry_run=True) as req:
        with capture_logs() as logs:
            round_ = await req.start(round_request(5), structlog.get_logger())
            (result,) = await round_.wait()
    assert result.outcome is Outcome.DRY_RUN
    assert steps.received == {}
    assert await annotation(emulator, "saver") is None
    (line,) = [entry for entry in logs if entry["event"] == "dry_run_checkpoint"]
    assert line["url"] == f"http://127.0.0.1:{port}/checkpoint"


async def test_twenty_steps_are_asked_at_once(emulator: ClusterEmulator, steps: Steps) -> None:
    names = [f"step-{i:02d}" for i in range(20)]
    emulator.seed(node(), secret(), *(step_pod(n, steps.start(n, saves(0.5))) for n in names))
    loop = asyncio.get_running_loop()
    async with requester(emulator.url) as req:
        started = loop.time()
        round_ = await req.start(round_request(10), structlog.get_logger())
        await asyncio.wait_for(round_.all_sent.wait(), 1.0)
        sent_at = loop.time()
        results = await round_.wait()
        ended = loop.time()
    assert all(r.outcome is Outcome.SAVED for r in results)
    assert sent_at - started < 0.4  # on their way well before any step answers
    assert max(r.sent_at or 0 for r in results) <= sent_at
    # Concurrent, not one after another: 20 half-second saves end together.
    assert ended - started < 2.0
    arrivals = [when for name in names for when, _ in steps.received[name]]
    assert max(arrivals) - min(arrivals) < 0.4


async def test_no_time_left_asks_no_one(emulator: ClusterEmulator, steps: Steps) -> None:
    port = steps.start("saver", saves())
    emulator.seed(node(), secret(), step_pod("saver", port))
    async with requester(emulator.url) as req:
        round_ = await req.start(round_request(0.5), structlog.get_logger())
        assert await round_.wait() == ()
    assert "left before the checkpoint deadline" in round_.error
    assert round_.all_sent.is_set()  # nothing to wait for
    assert round_.holds == {}
    assert steps.received == {}


def free_port_number() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
