"""``spotguard queue`` as two real replicas: the emulated API server (child process), the local
Service Bus broker, Lease failover by SIGKILL, a redelivery handled once, and a VM that comes back;
and the fleet count from the agents' notices topic, once per eviction across a failover; a second
eviction updating the fleet ledger (its pool read from the node), and a node patch that meets a
conflicting write and is redone on the fresh node.

The replicas run on the system clock, so the events they get carry the time of the test run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from spotguard.clock import rfc3339
from spotguard.kube.client import user_agent
from spotguard.queue.fleet import LEDGER_KEY, LEDGER_NAME, parse_ledger
from spotguard.queue.recovery import recovery_record
from spotguard.sim.child_process import child_env, free_port, spawn, stop_process, wait_ready
from spotguard.sim.cluster_process import ClusterProcess
from spotguard.sim.servicebus import ServiceBusBroker
from spotguard.sinks.cloudevents import Origin
from tests.integration.test_queue_notices import cloud_event, preempt_notice
from tests.integration.test_queue_recovery import DOWN_AT, node
from tests.rbac_recorder import RECORDER, is_spotguard_client

DATA = Path(__file__).parents[1] / "data" / "eventgrid"
PREEMPTED = json.loads((DATA / "aks-spot-preempted-eventgrid.json").read_text())
NODE = "aks-spot-12345678-vmss000003"
VM = "aks-spot-12345678-vmss_3"
QUEUE = "vm-events"
NAMESPACE = "spotguard"
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/spotguard-queue"
TOPIC = "notices"
LEDGER = f"/api/v1/namespaces/{NAMESPACE}/configmaps/{LEDGER_NAME}"


class Replica:
    def __init__(self, name: str, cluster: ClusterProcess, broker: ServiceBusBroker, tmp: Path):
        self.name = name
        self.port = free_port()
        self.log = tmp / f"{name}.log"
        self.env = child_env(
            {
                "KUBECONFIG": str(cluster.kubeconfig),
                "SPOTGUARD_EVENTS_QUEUE": QUEUE,
                "SPOTGUARD_SERVICEBUS_CONNECTION_STRING": broker.connection_string,
                "SPOTGUARD_POD_NAME": name,
                "SPOTGUARD_POD_NAMESPACE": NAMESPACE,
                "SPOTGUARD_CLUSTER_NAME": "aks-ml",
                "SPOTGUARD_HTTP_ADDRESS": f"127.0.0.1:{self.port}",
                "SPOTGUARD_QUEUE_LEASE_DURATION": "3s",
                "SPOTGUARD_QUEUE_RENEW_DEADLINE": "2s",
                "SPOTGUARD_QUEUE_RETRY_PERIOD": "500ms",
                "SPOTGUARD_QUEUE_RECONCILE_INTERVAL": "1s",
                "SPOTGUARD_QUEUE_NOTICES_SUBSCRIPTION": f"{TOPIC}/queue-mode",
            }
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await spawn("queue", env=self.env, stdout=None, stderr=self.log)
        await wait_ready(self.proc, f"http://127.0.0.1:{self.port}", 30)

    async def stop(self, sig: int = 15) -> int:
        assert self.proc is not None
        return await stop_process(self.proc, 10, sig)

    async def metric(self, name: str, **labels: str) -> float:
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}")
        async with (
            aiohttp.ClientSession(trust_env=False) as http,
            http.get(f"http://127.0.0.1:{self.port}/metrics") as resp,
        ):
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(raw))
        return out


@asynccontextmanager
async def stack(
    tmp_path: Path, *others: dict[str, Any]
) -> AsyncIterator[tuple[ClusterProcess, ServiceBusBroker]]:
    """The broker and the emulated API server with NODE (down since DOWN_AT) and ``others``."""
    with ServiceBusBroker(
        queues=[QUEUE], topics={TOPIC: ["queue-mode", "audit"]}, lock_duration=5
    ) as broker:
        # Its whole request log, written as it stops: the e2e tests' RBAC recording.
        requests = RECORDER.request_log(tmp_path)
        cluster = ClusterProcess(
            kubeconfig=tmp_path / "kubeconfig",
            stderr=tmp_path / "emulator.log",
            env=child_env(),
            request_log=requests,
        )
        async with cluster:
            RECORDER.expect(requests)
            await cluster.control.seed(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                node(NODE, ready=False, since=DOWN_AT),
                *others,
            )
            yield cluster, broker


async def get(cluster: ClusterProcess, path: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.get(cluster.url + path) as resp,
    ):
        data: dict[str, Any] = await resp.json()
        return data


async def until(predicate: Any, timeout: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def taint_keys(cluster: ClusterProcess) -> list[str]:
    obj = await get(cluster, f"/api/v1/nodes/{NODE}")
    return [t["key"] for t in obj["spec"].get("taints") or ()]


async def holder(cluster: ClusterProcess) -> str | None:
    lease = await get(cluster, LEASE)
    return (lease.get("spec") or {}).get("holderIdentity")


def inject(broker: ServiceBusBroker, evicted: datetime | None = None) -> None:
    """The golden VirtualMachinePreempted event, as if the VM was evicted at ``evicted``."""
    evicted = evicted or datetime.now(UTC) - timedelta(seconds=5)
    event = json.loads(json.dumps(PREEMPTED))
    event[0]["eventTime"] = rfc3339(evicted + timedelta(seconds=2))
    event[0]["data"]["resourceInfo"]["properties"]["occurredTime"] = rfc3339(evicted)
    event[0]["data"]["operationalInfo"]["resourceEventTime"] = rfc3339(evicted)
    broker.inject(QUEUE, event, content_type="application/json")


def publish_notice(
    broker: ServiceBusBroker,
    evicted: datetime,
    *,
    node: str = NODE,
    vm: str = VM,
    nodepool: str = "spot",
) -> None:
    """The node's agent's Preempt notice, sent 30 s before ``evicted`` (its NotBefore).
    ``nodepool`` "": from an agent that could not tell its node's pool."""
    event = cloud_event(
        preempt_notice(
            event_id=f"A123BC45-0000-4000-8000-{int(vm.rsplit('_', 1)[1]):012d}",
            node=node,
            vm_name=vm,
            resources=(vm,),
            not_before=evicted,
            deadline=evicted - timedelta(seconds=2),
            first_seen=evicted - timedelta(seconds=30),
        ),
        Origin(cluster="aks-ml", node=node, nodepool=nodepool),
    )
    broker.inject(
        TOPIC,
        event.body(),
        message_id=event.id,
        content_type="application/cloudevents+json; charset=utf-8",
        application_properties=dict(event.properties),
    )


async def test_failover_redelivery_and_a_vm_that_comes_back(tmp_path: Path) -> None:
    async with stack(tmp_path) as (cluster, broker):
        a = Replica("queue-a", cluster, broker, tmp_path)
        b = Replica("queue-b", cluster, broker, tmp_path)
        try:
            await a.start()
            assert await until(lambda: _is(cluster, "queue-a"), 10, "queue-a to lead")
            await b.start()

            inject(broker)
            await until(lambda: _tainted(cluster), 15, "the out-of-service taint")
            await until(
                lambda: _metric_is(a, "spotguard_queue_messages_total", 1, outcome="completed"),
                5,
                "queue-a to complete the message",
            )
            assert await b.metric("spotguard_queue_messages_total", outcome="completed") == 0
            assert (
                await a.metric("spotguard_fleet_evictions_total", cluster="aks-ml", nodepool="spot")
                == 1
            )

            # The leader dies without releasing its lease; the standby takes over after it
            # expires, and a redelivery of the same event changes nothing on the node.
            await a.stop(9)
            await until(lambda: _is(cluster, "queue-b"), 15, "queue-b to take over")
            mark = await cluster.control.mark()
            inject(broker)
            await until(
                lambda: _metric_is(b, "spotguard_queue_messages_total", 1, outcome="completed"),
                15,
                "queue-b to complete the redelivery",
            )
            patches = [
                r
                for r in await cluster.control.requests(mark)
                if r["verb"] == "patch" and r["resource"] == "nodes"
            ]
            assert patches == []
            assert broker.messages(QUEUE) == []

            # The VM comes back (Deallocate policy): Ready again, so the taint goes.
            await _mark_ready(cluster)
            await until(lambda: _untainted(cluster), 10, "the taint to be removed")
            assert await b.metric("spotguard_queue_recoveries_total", outcome="untainted") == 1
            assert await b.stop() == 0
        finally:
            for replica in (a, b):
                if replica.proc is not None and replica.proc.returncode is None:
                    await replica.stop(9)
        errors = [
            line
            for replica in (a, b)
            for line in replica.lines()
            if line.get("level") in ("error", "critical")
        ]
        assert errors == []


async def _is(cluster: ClusterProcess, name: str) -> bool:
    return await holder(cluster) == name


async def _tainted(cluster: ClusterProcess) -> bool:
    return OUT_OF_SERVICE in await taint_keys(cluster)


async def _untainted(cluster: ClusterProcess) -> bool:
    return OUT_OF_SERVICE not in await taint_keys(cluster)


async def _metric_is(replica: Replica, name: str, value: float, **labels: str) -> bool:
    return await replica.metric(name, **labels) == value


async def _mark_ready(cluster: ClusterProcess) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "lastTransitionTime": now,
                    "lastHeartbeatTime": now,
                }
            ]
        }
    }
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.patch(
            f"{cluster.url}/api/v1/nodes/{NODE}/status",
            data=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def test_a_notice_counts_one_eviction_across_a_failover(tmp_path: Path) -> None:
    """The agent's notice is counted by the leader; after the leader dies, its redelivery and
    Azure's own event for the same eviction find the count in the ledger: once in all."""
    async with stack(tmp_path) as (cluster, broker):
        a = Replica("queue-a", cluster, broker, tmp_path)
        b = Replica("queue-b", cluster, broker, tmp_path)
        evicted = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=25)
        try:
            await a.start()
            assert await until(lambda: _is(cluster, "queue-a"), 10, "queue-a to lead")
            await b.start()

            publish_notice(broker, evicted)
            await until(
                lambda: _metric_is(
                    a, "spotguard_fleet_evictions_total", 1, cluster="aks-ml", nodepool="spot"
                ),
                15,
                "queue-a to count the notice",
            )
            await until(
                lambda: _metric_is(a, "spotguard_queue_messages_total", 1, outcome="completed"),
                5,
                "queue-a to complete the notice",
            )
            assert await b.metric("spotguard_queue_messages_total", outcome="completed") == 0

            await a.stop(9)
            await until(lambda: _is(cluster, "queue-b"), 15, "queue-b to take over")
            publish_notice(broker, evicted)  # as if queue-a died before settling it
            inject(broker, evicted + timedelta(seconds=1))  # Azure's report of the eviction
            await until(
                lambda: _metric_is(b, "spotguard_queue_messages_total", 2, outcome="completed"),
                15,
                "queue-b to complete both",
            )
            assert await _tainted(cluster)  # Event Grid's recovery is not affected
            assert (
                await b.metric("spotguard_fleet_evictions_total", cluster="aks-ml", nodepool="spot")
                == 0
            )
            assert broker.messages(f"{TOPIC}/subscriptions/queue-mode") == []
            assert len(broker.messages(f"{TOPIC}/subscriptions/audit")) == 2
            assert await b.stop() == 0
        finally:
            for replica in (a, b):
                if replica.proc is not None and replica.proc.returncode is None:
                    await replica.stop(9)
        ledger = parse_ledger((await get(cluster, LEDGER))["data"][LEDGER_KEY])
        assert [(e.vm, e.source, e.evicted) for e in ledger] == [
            ("aks-spot-12345678-vmss_3", "notice", evicted)
        ]
        errors = [
            line
            for replica in (a, b)
            for line in replica.lines()
            if line.get("level") in ("error", "critical")
        ]
        assert errors == []


NODE_2 = "aks-spot-12345678-vmss000004"
VM_2 = "aks-spot-12345678-vmss_4"


async def spotguard_requests(cluster: ClusterProcess, since: int) -> list[dict[str, Any]]:
    """Queue mode's requests (its API client's User-Agent), not the test's own."""
    return [
        r for r in await cluster.control.requests(since) if is_spotguard_client(r["user_agent"])
    ]


@pytest.mark.slow
async def test_a_second_eviction_updates_the_ledger(tmp_path: Path) -> None:
    """Two VMs evicted: Azure's event for the first creates the fleet ledger; the second VM's
    agent's notice, from an agent that could not tell its node's pool, finds the pool on the node
    and is added to the ledger (an update of the ConfigMap with the resourceVersion it read)."""
    soon = node(NODE_2, ready=True, since=DOWN_AT)
    async with stack(tmp_path, soon) as (cluster, broker):
        a = Replica("queue-a", cluster, broker, tmp_path)
        first = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
        second = first + timedelta(seconds=30)
        try:
            await a.start()
            assert await until(lambda: _is(cluster, "queue-a"), 10, "queue-a to lead")
            mark = await cluster.control.mark()

            inject(broker, first)
            await until(
                lambda: _metric_is(
                    a, "spotguard_fleet_evictions_total", 1, cluster="aks-ml", nodepool="spot"
                ),
                15,
                "queue-a to count Azure's event",
            )
            created = await get(cluster, LEDGER)
            assert [e.vm for e in parse_ledger(created["data"][LEDGER_KEY])] == [VM]

            publish_notice(broker, second, node=NODE_2, vm=VM_2, nodepool="")
            await until(
                lambda: _metric_is(
                    a, "spotguard_fleet_evictions_total", 2, cluster="aks-ml", nodepool="spot"
                ),
                15,
                "queue-a to count the second VM's notice",
            )
            await until(
                lambda: _metric_is(a, "spotguard_queue_messages_total", 2, outcome="completed"),
                5,
                "queue-a to complete both messages",
            )
            assert (
                await a.metric(
                    "spotguard_fleet_evictions_total", cluster="aks-ml", nodepool="unknown"
                )
                == 0
            )
            assert await a.stop() == 0
        finally:
            if a.proc is not None and a.proc.returncode is None:
                await a.stop(9)

        updated = await get(cluster, LEDGER)
        ledger = parse_ledger(updated["data"][LEDGER_KEY])
        assert [(e.vm, e.source, e.evicted, e.nodepool, e.node) for e in ledger] == [
            (VM, "eventgrid", first, "spot", NODE),
            (VM_2, "notice", second, "spot", NODE_2),
        ]
        # One object, written twice: created, then updated in place.
        assert updated["metadata"]["uid"] == created["metadata"]["uid"]
        assert int(updated["metadata"]["resourceVersion"]) > int(
            created["metadata"]["resourceVersion"]
        )
        requests = await spotguard_requests(cluster, mark)
        ledger_writes = [
            (r["verb"], r["name"], r["status"])
            for r in requests
            if r["resource"] == "configmaps" and r["verb"] not in {"get", "list", "watch"}
        ]
        assert ledger_writes == [("create", None, 201), ("update", LEDGER_NAME, 200)]
        # The pool came from the node: read by name (the notice said nothing about it).
        node_reads = [
            (r["name"], r["status"])
            for r in requests
            if r["verb"] == "get" and r["resource"] == "nodes"
        ]
        assert node_reads == [(NODE_2, 200)]
        errors = [line for line in a.lines() if line.get("level") in ("error", "critical")]
        assert errors == []


@pytest.mark.slow
async def test_a_conflicting_node_write_is_redone_on_the_fresh_node(tmp_path: Path) -> None:
    """Another actor changes the node while queue mode's taint patch is on its way: the patch,
    sent with the resourceVersion queue mode planned on, is refused with 409; queue mode reads
    the node again and plans anew. Here the other actor (an operator) put the out-of-service
    taint on itself, so the fresh plan records it as already there and not ours: queue mode must
    never remove a taint it did not add."""
    async with stack(tmp_path) as (cluster, broker):
        a = Replica("queue-a", cluster, broker, tmp_path)
        try:
            await a.start()
            assert await until(lambda: _is(cluster, "queue-a"), 10, "queue-a to lead")
            # Hold queue mode's first node patch for a moment (the emulator then serves it).
            rule = await cluster.control.add_fault(
                match={"verb": "patch", "resource": "nodes", "name": NODE, "user_agent": UA},
                delay=2.0,
                times=1,
            )
            mark = await cluster.control.mark()
            inject(broker)
            await until(lambda: _fault_hit(cluster, rule["id"]), 15, "queue-a's node patch")
            obj = await get(cluster, f"/api/v1/nodes/{NODE}")
            taints = [*obj["spec"].get("taints", []), OPERATOR_TAINT]
            await _merge_patch(cluster, {"spec": {"taints": taints}})

            await until(
                lambda: _metric_is(a, "spotguard_queue_messages_total", 1, outcome="completed"),
                15,
                "queue-a to complete the event",
            )
            assert await a.metric("spotguard_queue_recoveries_total", outcome="tainted") == 1
            assert (
                await a.metric("spotguard_fleet_evictions_total", cluster="aks-ml", nodepool="spot")
                == 1
            )
            assert await a.stop() == 0
        finally:
            if a.proc is not None and a.proc.returncode is None:
                await a.stop(9)

        writes = [
            (r["verb"], r["status"], r["fault"] is not None)
            for r in await spotguard_requests(cluster, mark)
            if r["resource"] == "nodes" and r["name"] == NODE
        ]
        # The held patch found the node changed (a real 409, from its resourceVersion), the node
        # was read again, and the second patch, planned on that, went through.
        assert writes == [("patch", 409, True), ("get", 200, False), ("patch", 200, False)], writes
        obj = await get(cluster, f"/api/v1/nodes/{NODE}")
        assert [t["key"] for t in obj["spec"]["taints"]].count(OUT_OF_SERVICE) == 1
        record = recovery_record(obj)
        assert record.taint_ours is False
        assert [(e.vm, e.action.value) for e in record.history] == [(VM, "already_tainted")]
        errors = [line for line in a.lines() if line.get("level") in ("error", "critical")]
        assert errors == []


#: Queue mode's User-Agent; the test's requests (plain aiohttp) send another.
UA = user_agent("queue")
OPERATOR_TAINT = {"key": OUT_OF_SERVICE, "value": "nodeshutdown", "effect": "NoExecute"}


async def _fault_hit(cluster: ClusterProcess, rule_id: int) -> bool:
    return any(f["id"] == rule_id and f["hits"] for f in await cluster.control.faults())


async def _merge_patch(cluster: ClusterProcess, patch: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.patch(
            f"{cluster.url}/api/v1/nodes/{NODE}",
            data=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
