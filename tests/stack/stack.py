"""One real stack for the whole tests/stack package, all child processes on 127.0.0.1:

- ``spotguard simulate-imds`` serving one VM per agent, and ``spotguard simulate-cluster`` with
  the spot nodes and their pods seeded (``objects()``);
- one real ``spotguard run`` per agent node (``tests.e2e.agent_harness.Agent``), each with the
  settings its scenario needs (``agent_env()``);
- Debian's Prometheus scraping the agents every 5 s (README.md, Monitoring) as static targets that
  carry the pod metadata Kubernetes discovery would give, relabelled by the one relabelling
  config (dashboards/relabel.yaml), loading dashboards/alerts/*.rules.yml and sending to
- Debian's Alertmanager, configured from config/alertmanager.yaml with the receivers' URLs
  pointed at a local webhook receiver that records every notification;
- a kube-state-metrics stand-in: a static target serving the ``kube_node_*`` series the rules
  join on, rendered from the emulated cluster's Node objects at each scrape (so the taints the
  agents set show, as they would with the real kube-state-metrics);
- a pipeline step's checkpoint endpoint (the step pod's IP is 127.0.0.1).

Each scenario has its own node and agent, so series and alert groups never mix.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from spotguard.sim.child_process import child_env, free_port
from spotguard.sim.cluster_process import ClusterControl, ClusterProcess
from spotguard.sim.cluster_scenarios import node_object, owner_ref, pod_object
from spotguard.sim.imds_process import ImdsControl, ImdsProcess
from spotguard.sim.kube_settings import STOP_AFTER_ANNOTATION
from tests.e2e.agent_harness import Agent, node_name, vm_name
from tests.monitoring import ALERTMANAGER_CONFIG, ROOT, RULE_FILES
from tests.stack.servers import (
    Alertmanager,
    CheckpointEndpoint,
    Prometheus,
    WebhookReceiver,
    kube_state_metrics,
    wait_until,
)

# --- what the stack is made of ----------------------------------------------------------------

#: Node (and agent) indices, one per scenario. AGENTLESS is a spot node with no agent at all.
RULE_ONLY, DIRECT, MISSED, UNCONFIRMED, BYSTANDER, AGENTLESS = range(6)
AGENTS = (RULE_ONLY, DIRECT, MISSED, UNCONFIRMED, BYSTANDER)
NODES = (*AGENTS, AGENTLESS)

CLUSTER = "aks-stack"  # SPOTGUARD_CLUSTER_NAME
NODEPOOL = "spot"  # the seeded nodes' kubernetes.azure.com/agentpool
AGENT_NAMESPACE = "spotguard"  # where the DaemonSet's pods would run (target label)
NAMESPACE = "ml"  # the workloads
TOKEN = "stack-checkpoint-token"
JOB = "spotguard"
KSM_JOB = "kube-state-metrics"
#: README.md, Monitoring: "Scrape the agent every 5 s".
SCRAPE_INTERVAL = 5.0
#: The rule groups set their own evaluation interval (15 s for the node alerts, 1m for the fleet
#: ones); the global one applies to nothing here and is set to the node group's for clarity.
EVALUATION_INTERVAL = 15.0
#: Test-only Alertmanager timing (see alertmanager_config).
GROUP_WAIT = 1.0
GROUP_INTERVAL = 1.0
#: The blind threshold of the bystander's agent (default 30 s), to make it blind quickly.
BYSTANDER_BLIND_AFTER = "2s"
RELABEL = ROOT / "dashboards" / "relabel.yaml"
#: The pod on UNCONFIRMED's node that cannot be evicted (see scenarios.drain_unconfirmed).
STUCK_POD = f"stuck-{UNCONFIRMED}"


def agent_pod(index: int) -> str:
    """The agent's pod name, as the DaemonSet would name it."""
    return f"spotguard-agent-{'abcdef'[index]}{index}x7q"


def agent_env(index: int, *, alertmanager: str, unreachable: str) -> dict[str, str]:
    """What each scenario's agent is configured with, besides node name, IMDS URL, HTTP address
    and kubeconfig."""
    env = {"SPOTGUARD_CLUSTER_NAME": CLUSTER}
    if index == DIRECT:
        env["SPOTGUARD_ALERTMANAGER_URL"] = alertmanager
    if index == MISSED:
        # Direct alerts configured, but Alertmanager is unreachable from this node: the page
        # has to come from the rules.
        env["SPOTGUARD_ALERTMANAGER_URL"] = unreachable
        # A budget that refuses stays respected: its pod is left behind.
        env["SPOTGUARD_POLICY__PREEMPT__DELETE_ON_PDB_BLOCK"] = "false"
    if index == BYSTANDER:
        env["SPOTGUARD_BLIND_AFTER"] = BYSTANDER_BLIND_AFTER
    return env


def objects(step_port: int) -> list[dict[str, Any]]:
    """The seeded cluster: the spot nodes, and on them

    - RULE_ONLY, DIRECT: one pod that leaves 0.2 s after it is asked;
    - MISSED: such a pod, a pipeline step that answers checkpoint requests (at 127.0.0.1), and a
      pod whose PodDisruptionBudget never allows an eviction;
    - UNCONFIRMED: one pod (``stuck-3``), whose evictions the scenario makes the API server
      refuse.
    """
    quick = {STOP_AFTER_ANNOTATION: "0.2"}
    token = base64.b64encode(TOKEN.encode()).decode()
    found: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "spotguard-checkpoint", "namespace": NAMESPACE},
            "type": "Opaque",
            "data": {"token": token},
        },
    ]
    found += [
        node_object(node_name(i), NODEPOOL, i, spot=True, ip=f"10.224.0.{10 + i}") for i in NODES
    ]

    def pod(name: str, index: int, **extra: Any) -> dict[str, Any]:
        extra.setdefault("annotations", quick)
        extra.setdefault("labels", {"app": name})
        return pod_object(NAMESPACE, name, node_name(index), f"10.100.{index}.7", **extra)

    for i in (RULE_ONLY, DIRECT, MISSED):
        found.append(pod(f"app-{i}", i))
    guarded = f"guarded-{MISSED}"
    found.append(pod(guarded, MISSED))
    found.append(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": guarded, "namespace": NAMESPACE, "generation": 1},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": guarded}}},
        }
    )
    found.append(pod(STUCK_POD, UNCONFIRMED))
    step = pod(
        f"pipeline-step-{MISSED}",
        MISSED,
        labels={"workflows.argoproj.io/workflow": "train"},
        owner=owner_ref("Workflow", "train", api_version="argoproj.io/v1alpha1"),
        grace=60,
        annotations={
            **quick,
            "spotguard.io/checkpoint": "http",
            "spotguard.io/checkpoint-port": str(step_port),
        },
    )
    step["status"]["podIP"] = "127.0.0.1"
    step["status"]["podIPs"] = [{"ip": "127.0.0.1"}]
    found.append(step)
    return found


def prometheus_config(agents: Mapping[int, Agent], ksm: str, alertmanager: str) -> dict[str, Any]:
    relabel = yaml.safe_load(RELABEL.read_text())
    return {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL:g}s",
            "scrape_timeout": "4s",
            "evaluation_interval": f"{EVALUATION_INTERVAL:g}s",
        },
        "rule_files": [str(path) for path in RULE_FILES],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_interval": f"{SCRAPE_INTERVAL:g}s",
                "scrape_timeout": "4s",
                # What Kubernetes pod discovery would give each agent pod; the relabelling
                # config turns it into the target labels node, namespace and pod.
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{agent.port}"],
                        "labels": {
                            "__meta_kubernetes_namespace": AGENT_NAMESPACE,
                            "__meta_kubernetes_pod_name": agent_pod(index),
                            "__meta_kubernetes_pod_node_name": agent.node,
                        },
                    }
                    for index, agent in agents.items()
                ],
                "relabel_configs": relabel["relabel_configs"],
                "metric_relabel_configs": relabel["metric_relabel_configs"],
            },
            {
                # README.md: scrape kube-state-metrics with honor_labels (its own `node` label).
                "job_name": KSM_JOB,
                "honor_labels": True,
                "static_configs": [{"targets": [ksm]}],
            },
        ],
    }


def alertmanager_config(receiver_url: str) -> dict[str, Any]:
    """config/alertmanager.yaml with every receiver's webhook pointed at the local receiver
    (``<url>/<receiver name>``) and, for the test only, short group timers.

    The example waits 30 s (group_wait) so that a rule alert and the agent's direct alert for a
    node land in one first notification, and then 5m (group_interval). Here both are 1 s: pages
    arrive within seconds, and a rule alert always arrives after the group's first notification
    — the harder case for "one notification, not two", which then rests on Alertmanager merging
    the two alerts (same labels, same fingerprint) rather than on timing. repeat_interval and
    everything else (routes, matchers, grouping, inhibitions) is the example's own.
    """
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in config["receivers"]:
        integrations = set(receiver) - {"name"}
        assert integrations <= {"webhook_configs"}, (
            f"receiver {receiver['name']}: only webhooks can be pointed at the local receiver, "
            f"not {sorted(integrations)}"
        )
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{receiver_url}/{receiver['name']}"

    def shorten(route: dict[str, Any]) -> int:
        changed = 0
        if "group_wait" in route:
            route["group_wait"] = f"{GROUP_WAIT:g}s"
            changed += 1
        if "group_interval" in route:
            route["group_interval"] = f"{GROUP_INTERVAL:g}s"
            changed += 1
        return changed + sum(shorten(child) for child in route.get("routes", []))

    assert shorten(config["route"]) >= 2, "the example's spotguard route sets no group timers"
    return config


# --- the stack --------------------------------------------------------------------------------


@dataclass
class Stack:
    tmp: Path
    imds: ImdsControl
    cluster: ClusterControl
    cluster_url: str
    prometheus: Prometheus
    alertmanager: Alertmanager
    receiver: WebhookReceiver
    step: CheckpointEndpoint
    agents: dict[int, Agent]
    #: wall time the stack was up (every agent scraped once)
    started_at: float

    def agent(self, index: int) -> Agent:
        return self.agents[index]

    async def last_scrape(self, index: int) -> tuple[float | None, str]:
        return await self.prometheus.last_scrape(JOB, node=node_name(index))

    async def next_scrape(self, index: int, *, after: float | None = None) -> float:
        """Wait for a scrape of agent ``index`` that started after ``after`` (default: after
        the last one so far); its start time, as Prometheus reports it."""
        if after is None:
            after, _ = await self.last_scrape(index)
            after = after or 0.0

        async def scraped() -> float | None:
            at, _ = await self.last_scrape(index)
            return at if at is not None and at > after + 0.001 else None

        return await wait_until(
            scraped,
            timeout=3 * SCRAPE_INTERVAL,
            what=f"a scrape of {node_name(index)} after {after:.3f}",
            interval=0.1,
        )

    async def samples(self, expr: str, window: str = "3m") -> list[tuple[float, float]]:
        """The raw samples of the one series ``expr`` selects, over ``window`` up to now."""
        result = await self.prometheus.query(f"{expr}[{window}]")
        assert len(result) <= 1, f"{expr}: {len(result)} series"
        return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []

    async def diagnostics(self, index: int | None = None) -> str:
        parts = []
        for i, agent in self.agents.items():
            if index is None or i == index:
                state = "running" if agent.running else "not running"
                parts.append(
                    f"--- agent {agent.node} ({state}, full log {agent.log_path}) ---\n"
                    + agent.tail(40)
                )
        parts.append(self.receiver.summary())
        with contextlib.suppress(Exception):
            alerts = await self.prometheus.alerts()
            lines = [
                f"  {a['state']} {a['labels'].get('alertname')} {a['labels'].get('node')}"
                for a in alerts
            ]
            parts.append("Prometheus alerts:\n" + ("\n".join(lines) or "  (none)"))
        return "\n".join(parts)


async def _serve_ksm(cluster_url: str) -> tuple[web.AppRunner, int]:
    """kube-state-metrics stand-in: the kube_node_* series of the emulated cluster's Nodes."""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=4), trust_env=False)

    async def metrics(request: web.Request) -> web.Response:
        async with session.get(cluster_url + "/api/v1/nodes") as resp:
            nodes = (await resp.json())["items"]
        return web.Response(
            body=kube_state_metrics(nodes).encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def close(app: web.Application) -> None:
        await session.close()

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.on_cleanup.append(close)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


@asynccontextmanager
async def real_stack(tmp: Path) -> AsyncIterator[Stack]:
    async with contextlib.AsyncExitStack() as stack:
        imds = ImdsProcess([vm_name(i) for i in AGENTS], env=child_env(), stderr=tmp / "imds.log")
        cluster = ClusterProcess(
            kubeconfig=tmp / "kubeconfig",
            scenario="empty",
            stderr=tmp / "emulator.log",
            env=child_env(),
        )
        stack.push_async_callback(imds.stop)
        stack.push_async_callback(cluster.stop)
        await asyncio.gather(imds.start(30.0), cluster.start())

        step = CheckpointEndpoint(token=TOKEN)
        await step.start()
        stack.push_async_callback(step.stop)
        await cluster.control.seed(*objects(step.port))

        receiver = WebhookReceiver()
        await receiver.start()
        stack.push_async_callback(receiver.stop)
        ksm, ksm_port = await _serve_ksm(cluster.url)
        stack.push_async_callback(ksm.cleanup)

        alertmanager = Alertmanager(tmp / "alertmanager")
        prometheus = Prometheus(tmp / "prometheus")
        unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        agents = {
            i: Agent(
                node=node_name(i),
                vm=vm_name(i),
                env={
                    "KUBECONFIG": str(cluster.kubeconfig),
                    "SPOTGUARD_IMDS_URL": imds.urls[vm_name(i)],
                    **agent_env(i, alertmanager=alertmanager.url, unreachable=unreachable),
                },
                log_path=tmp / f"agent-{i}.log",
            )
            for i in AGENTS
        }
        for agent in agents.values():
            stack.push_async_callback(agent.close)

        stack.push_async_callback(alertmanager.stop)
        await alertmanager.start(alertmanager_config(receiver.url))
        stack.push_async_callback(prometheus.stop)
        await asyncio.gather(
            prometheus.start(
                prometheus_config(agents, f"127.0.0.1:{ksm_port}", f"127.0.0.1:{alertmanager.port}")
            ),
            *(agent.start() for agent in agents.values()),
        )
        result = Stack(
            tmp=tmp,
            imds=imds.control,
            cluster=cluster.control,
            cluster_url=cluster.url,
            prometheus=prometheus,
            alertmanager=alertmanager,
            receiver=receiver,
            step=step,
            agents=agents,
            started_at=0.0,
        )

        # Every agent scraped once, ready (its counters at zero: the sample before any event).
        async def up(index: int) -> bool:
            at, health = await result.last_scrape(index)
            return at is not None and health == "up"

        async def ksm_up() -> bool:
            target = await prometheus.target(KSM_JOB)
            return bool(target["health"] == "up")

        # Prometheus 2.x sends its first targets to the scrape manager ~5 s after start.
        await wait_until(
            lambda: all_true(up(i) for i in AGENTS),
            timeout=30,
            what="Prometheus to scrape every agent",
            details=prometheus.log_tail,
        )
        await wait_until(ksm_up, timeout=15, what="Prometheus to scrape kube-state-metrics")
        result.started_at = time.time()
        yield result


async def all_true(checks: Any) -> bool:
    return all(await asyncio.gather(*checks))
