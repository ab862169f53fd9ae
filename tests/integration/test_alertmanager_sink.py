"""The direct-alert sink against the real Debian Alertmanager (0.25), routed by a config derived
from config/alertmanager.yaml to a local webhook receiver: labels, annotations and expiry as
Alertmanager stores them, routing by severity, dedup by label set, grouping with rule alerts of
the same node, bounded retries when Alertmanager is down or broken, and dry-run.

One Alertmanager serves the whole module; every test uses its own node, so their alerts never
share a group. A missing binary fails the module (it never skips).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import pytest_asyncio
import structlog
import yaml
from aiohttp import web
from structlog.testing import capture_logs

from spotguard.clock import SystemClock, rfc3339
from spotguard.model import Kind, Notice, Source, Status
from spotguard.sinks.alertmanager import (
    DEADLINE_MISSED,
    PREEMPTION_IMMINENT,
    AlertmanagerSink,
    DeliveryOptions,
    Outcome,
    deadline_missed_alert,
    preemption_imminent_alert,
)
from tests.monitoring import ALERTMANAGER_CONFIG, RUNBOOK_BASE_URL, alerting_rules, tool

#: The Alertmanager fixture and the tests that use it share one event loop (its webhook runs there).
module_loop = pytest.mark.asyncio(loop_scope="module")

CLUSTER = "prod-weu"
NODEPOOL = "spot"
NODE_LABELS = ("cluster", "nodepool", "node")
DIRECT_LABELS = {"alertname", "severity", *NODE_LABELS}
RULES = {rule["alert"]: rule for rule in alerting_rules()}
# Short timings for the test only; routing, grouping and inhibition stay as configured.
GROUP_WAIT = 1.0
GROUP_INTERVAL = 1.0
_nodes = itertools.count(1)
T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_node() -> str:
    """A node of its own per test: its alerts form their own groups in the shared Alertmanager."""
    return f"aks-spot-12345678-vmss{next(_nodes):06d}"


def notice(node: str, *, deadline_in: float = 25.0) -> Notice:
    now = datetime.now(UTC)
    return Notice(
        event_id=f"event-{node}",
        kind=Kind.PREEMPT,
        status=Status.SCHEDULED,
        node=node,
        vm_name=node.replace("vmss", "vmss_"),
        resources=(node.replace("vmss", "vmss_"),),
        not_before=now + timedelta(seconds=deadline_in + 2),
        deadline=now + timedelta(seconds=deadline_in),
        source=Source.IMDS,
        description="",
        duration_s=-1,
        first_seen=now,
    )


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def log() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger().bind(test="am-sink")
    return logger


# --- the stack: webhook receiver + Alertmanager ---------------------------------------------


@dataclass
class Webhook:
    """Records every notification Alertmanager sends, with the receiver it was sent to."""

    notifications: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        payload["_path_receiver"] = request.match_info["receiver"]
        async with self.arrived:
            self.notifications.append(payload)
            self.arrived.notify_all()
        return web.Response()

    def for_node(self, node: str) -> list[dict[str, Any]]:
        return [n for n in self.notifications if n["groupLabels"].get("node") == node]

    async def wait_for_node(self, node: str, count: int = 1, timeout: float = 5.0) -> None:
        async with self.arrived:
            await asyncio.wait_for(
                self.arrived.wait_for(lambda: len(self.for_node(node)) >= count), timeout
            )


@dataclass
class Stack:
    url: str
    webhook: Webhook
    session: aiohttp.ClientSession

    async def alerts(self, node: str) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` for one node (active, silenced and inhibited alike)."""
        async with self.session.get(
            f"{self.url}/api/v2/alerts", params={"filter": f'node="{node}"'}
        ) as response:
            assert response.status == 200, await response.text()
            alerts: list[dict[str, Any]] = await response.json()
            return alerts

    async def received(self) -> float:
        """Alerts Alertmanager has accepted so far, over every API version and status."""
        async with self.session.get(f"{self.url}/metrics") as response:
            text = await response.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("alertmanager_alerts_received_total{")
        )

    async def post_raw(self, alerts: list[dict[str, Any]]) -> None:
        """Post as Prometheus would: the rule alerts of the same node."""
        async with self.session.post(f"{self.url}/api/v2/alerts", json=alerts) as response:
            assert response.status == 200, await response.text()


def derived_config(webhook_port: int) -> dict[str, Any]:
    """config/alertmanager.yaml with the receivers pointed at the local webhook and short waits."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", GROUP_WAIT), ("group_interval", GROUP_INTERVAL)):
            if key in route or route is config["route"]:
                route[key] = f"{int(value * 1000)}ms"
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    for receiver in config["receivers"]:
        hooks = receiver.get("webhook_configs")
        assert hooks, f"receiver {receiver['name']} has no webhook_configs to redirect"
        for hook in hooks:
            hook["url"] = f"http://127.0.0.1:{webhook_port}/{receiver['name']}"
    return config


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    binary = tool("prometheus-alertmanager", "prometheus-alertmanager")
    workdir = tmp_path_factory.mktemp("alertmanager")
    webhook = Webhook()
    app = web.Application()
    app.router.add_post("/{receiver}", webhook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    webhook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", webhook_port).start()

    config_file = workdir / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(derived_config(webhook_port)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = (workdir / "alertmanager.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config_file}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.external-url={url}",
        "--cluster.listen-address=",  # no HA gossip (it would bind 0.0.0.0:9094)
        stdout=log_file,
        stderr=log_file,
    )
    session = aiohttp.ClientSession(trust_env=False)
    try:
        await _wait_ready(session, url, process, workdir / "alertmanager.log")
        yield Stack(url=url, webhook=webhook, session=session)
    finally:
        await session.close()
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        log_file.close()
        await runner.cleanup()


async def _wait_ready(
    session: aiohttp.ClientSession,
    url: str,
    process: asyncio.subprocess.Process,
    log_path: Path,
) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.returncode is not None:
            break
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{url}/-/ready") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    pytest.fail(f"Alertmanager did not become ready:\n{_tail(log_path)}")


def _tail(path: Path) -> str:
    return path.read_text()[-3000:]


def sink(
    stack_url: str,
    *,
    dry_run: bool = False,
    options: DeliveryOptions | None = None,
    session: aiohttp.ClientSession | None = None,
) -> AlertmanagerSink:
    return AlertmanagerSink(
        url=stack_url,
        runbook_base_url=RUNBOOK_BASE_URL,
        clock=SystemClock(),
        log=log(),
        dry_run=dry_run,
        options=options,
        session=session,
    )


def rule_alert(alertname: str, node: str) -> dict[str, Any]:
    """What Prometheus would post for the rule ``alertname`` (labels after aggregation)."""
    rule = RULES[alertname]
    now = datetime.now(UTC)

    def render(template: str) -> str:
        return (
            template.replace("{{ $labels.node }}", node)
            .replace("{{ $labels.nodepool }}", NODEPOOL)
            .replace("{{ $labels.cluster }}", CLUSTER)
        )

    return {
        "labels": {
            "alertname": alertname,
            "severity": rule["labels"]["severity"],
            "cluster": CLUSTER,
            "nodepool": NODEPOOL,
            "node": node,
        },
        "annotations": {k: render(v) for k, v in rule["annotations"].items()},
        "startsAt": rfc3339(now),
        "endsAt": rfc3339(now + timedelta(minutes=4)),  # Prometheus: 4 x resend delay
        "generatorURL": "http://prometheus.example.invalid/graph?g0.expr=spotguard",
    }


def only(items: Sequence[T]) -> T:
    assert len(items) == 1, json.dumps(items, indent=1)
    return items[0]


# --- the alert as Alertmanager stores and routes it ----------------------------------------


@module_loop
async def test_preemption_imminent_is_stored_and_goes_to_the_team_channel(stack: Stack) -> None:
    node = new_node()
    n = notice(node, deadline_in=25)
    async with sink(stack.url) as am:
        outcome = await am.preemption_imminent(n, cluster=CLUSTER, nodepool=NODEPOOL)
    assert outcome is Outcome.SUCCESS

    stored = only(await stack.alerts(node))
    assert stored["labels"] == {
        "alertname": PREEMPTION_IMMINENT,
        "severity": "info",
        "cluster": CLUSTER,
        "nodepool": NODEPOOL,
        "node": node,
    }
    assert set(stored["annotations"]) == {"summary", "description", "runbook_url"}
    assert stored["annotations"]["runbook_url"] == (
        f"{RUNBOOK_BASE_URL}SpotguardPreemptionImminent.md"
    )
    assert stored["annotations"]["summary"] == f"Spot node {node} is being preempted"
    assert stored["status"]["state"] == "active"
    ends_at = parse_time(stored["endsAt"])
    assert ends_at > datetime.now(UTC) + timedelta(minutes=4)
    # the deadline plus five minutes: it expires by itself once the agent is gone
    assert abs((ends_at - (n.deadline + timedelta(minutes=5))).total_seconds()) < 0.01
    assert abs((parse_time(stored["startsAt"]) - datetime.now(UTC)).total_seconds()) < 5
    assert [r["name"] for r in stored["receivers"]] == ["team-channel"]

    await stack.webhook.wait_for_node(node)
    notification = only(stack.webhook.for_node(node))
    assert notification["receiver"] == notification["_path_receiver"] == "team-channel"
    assert notification["status"] == "firing"
    assert notification["groupLabels"] == {"cluster": CLUSTER, "nodepool": NODEPOOL, "node": node}
    assert only(notification["alerts"])["labels"] == stored["labels"]


@module_loop
async def test_deadline_missed_pages_oncall(stack: Stack) -> None:
    node = new_node()
    async with sink(stack.url) as am:
        outcome = await am.deadline_missed(
            notice(node, deadline_in=-3), late_s=3.2, cluster=CLUSTER, nodepool=NODEPOOL
        )
    assert outcome is Outcome.SUCCESS

    stored = only(await stack.alerts(node))
    assert stored["labels"] == {
        "alertname": DEADLINE_MISSED,
        "severity": "page",
        "cluster": CLUSTER,
        "nodepool": NODEPOOL,
        "node": node,
    }
    assert stored["annotations"]["runbook_url"] == f"{RUNBOOK_BASE_URL}SpotguardDeadlineMissed.md"
    assert "3.2s after the notice deadline" in stored["annotations"]["description"]
    ends_in = parse_time(stored["endsAt"]) - datetime.now(UTC)
    assert timedelta(minutes=14) < ends_in <= timedelta(minutes=15)

    await stack.webhook.wait_for_node(node)
    notification = only(stack.webhook.for_node(node))
    assert notification["receiver"] == notification["_path_receiver"] == "oncall"
    assert only(notification["alerts"])["labels"]["severity"] == "page"


@module_loop
async def test_the_same_alert_twice_is_one_alert_and_one_notification(stack: Stack) -> None:
    node = new_node()
    n = notice(node)
    async with sink(stack.url) as am:
        assert await am.preemption_imminent(n, cluster=CLUSTER, nodepool=NODEPOOL) == "success"
        assert await am.preemption_imminent(n, cluster=CLUSTER, nodepool=NODEPOOL) == "success"
        await stack.webhook.wait_for_node(node)
        # again after the notification went out (a restarted agent resuming its notice)
        assert await am.preemption_imminent(n, cluster=CLUSTER, nodepool=NODEPOOL) == "success"
        await asyncio.sleep(2.5 * GROUP_INTERVAL)

    only(await stack.alerts(node))
    notification = only(stack.webhook.for_node(node))
    assert len(notification["alerts"]) == 1


@module_loop
async def test_a_rule_alert_of_the_same_name_merges_with_the_direct_one(stack: Stack) -> None:
    node = new_node()
    async with sink(stack.url) as am:
        assert await am.preemption_imminent(notice(node), cluster=CLUSTER, nodepool=NODEPOOL) == (
            Outcome.SUCCESS
        )
    await stack.post_raw([rule_alert(PREEMPTION_IMMINENT, node)])

    stored = only(await stack.alerts(node))
    # the younger post wins the annotations; the later endsAt (the direct alert's) is kept
    assert stored["generatorURL"].startswith("http://prometheus.example.invalid/")
    assert parse_time(stored["endsAt"]) > datetime.now(UTC) + timedelta(minutes=4, seconds=10)
    await stack.webhook.wait_for_node(node)
    assert len(only(stack.webhook.for_node(node))["alerts"]) == 1


@module_loop
async def test_a_rule_alert_of_the_same_node_joins_the_same_notification(stack: Stack) -> None:
    """Grouping by cluster, nodepool, node: the direct info alert and a rule ticket alert (both
    to the team channel, neither inhibits the other) arrive as one notification."""
    node = new_node()
    async with sink(stack.url) as am:
        outcome = await am.preemption_imminent(notice(node), cluster=CLUSTER, nodepool=NODEPOOL)
    assert outcome is Outcome.SUCCESS
    await stack.post_raw([rule_alert("SpotguardCheckpointFailed", node)])

    await stack.webhook.wait_for_node(node)
    notification = only(stack.webhook.for_node(node))
    assert notification["receiver"] == "team-channel"
    assert notification["groupLabels"] == {"cluster": CLUSTER, "nodepool": NODEPOOL, "node": node}
    assert sorted(a["labels"]["alertname"] for a in notification["alerts"]) == [
        "SpotguardCheckpointFailed",
        PREEMPTION_IMMINENT,
    ]
    assert {frozenset(a["labels"]) for a in notification["alerts"]} == {frozenset(DIRECT_LABELS)}


# --- failure: bounded, reported, never raised ------------------------------------------------


@module_loop
async def test_alertmanager_down_gives_error_within_the_bound() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    options = DeliveryOptions(attempts=3, request_timeout=1.0, budget=3.0)
    with capture_logs() as logs:
        started = time.monotonic()
        async with sink(url, options=options) as am:
            outcome = await am.preemption_imminent(
                notice(new_node()), cluster=CLUSTER, nodepool=NODEPOOL
            )
        elapsed = time.monotonic() - started

    assert outcome is Outcome.ERROR
    assert elapsed < options.budget
    failed = [e for e in logs if e["event"] == "alert_attempt_failed"]
    assert [e["attempt"] for e in failed] == [1, 2, 3]
    assert "ClientConnectorError" in failed[0]["error"]
    final = only([e for e in logs if e["event"] == "alert_not_sent"])
    assert final["log_level"] == "error"
    assert final["attempts"] == 3


@dataclass
class Stub:
    """A broken Alertmanager: counts requests and answers with ``behaviour``."""

    url: str
    requests: list[float]


@contextlib.asynccontextmanager
async def stub(behaviour: Callable[[], Any]) -> AsyncIterator[Stub]:
    requests: list[float] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        requests.append(time.monotonic())
        response: web.StreamResponse = await behaviour()
        return response

    app = web.Application()
    app.router.add_post("/api/v2/alerts", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Stub(url=f"http://127.0.0.1:{port}", requests=requests)
    finally:
        await runner.cleanup()


async def _status(code: int) -> web.Response:
    return web.Response(status=code, text="broken on purpose")


async def _hang() -> web.Response:
    await asyncio.sleep(3600)
    return web.Response()


@module_loop
@pytest.mark.parametrize(
    ("behaviour", "options", "requests", "bound"),
    [
        # 5xx is retried, up to the number of attempts
        (lambda: _status(503), DeliveryOptions(attempts=3), 3, 2.0),
        # a 4xx is our fault: trying again would not help
        (lambda: _status(400), DeliveryOptions(attempts=3), 1, 0.5),
        # an Alertmanager that accepts and never answers: each request times out
        (_hang, DeliveryOptions(attempts=2, request_timeout=0.3, budget=5.0), 2, 1.5),
        # the whole call's budget wins over attempts x request timeout
        (_hang, DeliveryOptions(attempts=3, request_timeout=2.0, budget=0.5), 1, 0.9),
    ],
    ids=["503-retried", "400-not-retried", "hang-per-request-timeout", "hang-budget"],
)
async def test_broken_alertmanager_gives_error_within_the_bound(
    behaviour: Callable[[], Any], options: DeliveryOptions, requests: int, bound: float
) -> None:
    async with stub(behaviour) as broken, sink(broken.url, options=options) as am:
        started = time.monotonic()
        outcome = await am.deadline_missed(
            notice(new_node()), late_s=1.0, cluster=CLUSTER, nodepool=NODEPOOL
        )
        elapsed = time.monotonic() - started
        assert outcome is Outcome.ERROR
        assert len(broken.requests) == requests
        assert elapsed < bound


@module_loop
async def test_a_shared_session_is_used_and_left_open(stack: Stack) -> None:
    node = new_node()
    async with aiohttp.ClientSession() as session:
        async with sink(stack.url, session=session) as am:
            outcome = await am.preemption_imminent(notice(node), cluster=CLUSTER, nodepool=NODEPOOL)
        assert outcome is Outcome.SUCCESS
        assert not session.closed
    only(await stack.alerts(node))


@module_loop
async def test_the_own_session_goes_through_the_environments_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unlike IMDS, Alertmanager is an ordinary service: an Alertmanager outside NO_PROXY is
    reached through HTTP(S)_PROXY (here a local stub standing in for the proxy)."""
    seen: list[tuple[str, str]] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append((request.headers["Host"], request.path))
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    try:
        # example.invalid never resolves: only the proxy can have answered
        async with sink("http://alertmanager.example.invalid:9093/am/") as am:
            outcome = await am.preemption_imminent(
                notice(new_node()), cluster=CLUSTER, nodepool=NODEPOOL
            )
    finally:
        await runner.cleanup()
    assert outcome is Outcome.SUCCESS
    assert seen == [("alertmanager.example.invalid:9093", "/am/api/v2/alerts")]


# --- dry-run ---------------------------------------------------------------------------------


@module_loop
async def test_dry_run_logs_the_alert_and_sends_nothing(stack: Stack) -> None:
    node = new_node()
    before = await stack.received()
    with capture_logs() as logs:
        async with sink(stack.url, dry_run=True) as am:
            imminent = await am.preemption_imminent(
                notice(node), cluster=CLUSTER, nodepool=NODEPOOL
            )
            missed = await am.deadline_missed(
                notice(node), late_s=1.0, cluster=CLUSTER, nodepool=NODEPOOL
            )

    assert imminent is missed is Outcome.SKIPPED
    written = [e for e in logs if e["event"] == "dry_run_write"]
    assert [e["alerts"][0]["labels"]["alertname"] for e in written] == [
        PREEMPTION_IMMINENT,
        DEADLINE_MISSED,
    ]
    assert all(e["action"] == "alert" for e in written)
    assert await stack.received() == before
    assert await stack.alerts(node) == []
    assert stack.webhook.for_node(node) == []


# --- the direct alerts and the rules of the same name ----------------------------------------


@pytest.mark.parametrize("alertname", [PREEMPTION_IMMINENT, DEADLINE_MISSED])
def test_direct_alerts_agree_with_their_rules(alertname: str) -> None:
    """Same severity (else a second alert, not a merged one), same runbook, same summary."""
    node = new_node()
    rule = rule_alert(alertname, node)
    now = datetime.now(UTC)
    common: dict[str, Any] = {
        "cluster": CLUSTER,
        "nodepool": NODEPOOL,
        "now": now,
        "options": DeliveryOptions(),
        "runbook_base_url": RUNBOOK_BASE_URL,
    }
    direct = (
        preemption_imminent_alert(notice(node), **common)
        if alertname == PREEMPTION_IMMINENT
        else deadline_missed_alert(notice(node), late_s=1.0, **common)
    )
    assert direct["labels"] == rule["labels"]
    for key in ("summary", "runbook_url"):
        assert direct["annotations"][key] == rule["annotations"][key]
    assert "generatorURL" not in direct
    assert parse_time(direct["startsAt"]) == now.replace(microsecond=now.microsecond // 1000 * 1000)
