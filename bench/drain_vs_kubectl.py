"""spotguard against real ``kubectl drain`` on the same node and the same emulated API server.

For nodes with 30, 110 and 250 pods, each round drains an identical, freshly seeded node once per
tool, one tool after the other:

- **spotguard, 30 s notice** and **spotguard, 10 s notice**: the real agent (``spotguard run``)
  against ``spotguard simulate-imds`` and ``spotguard simulate-cluster`` child processes, as a
  DaemonSet pod would run (default settings: 1 s polling, 2 s safety margin). t0 is the moment
  the bench injects the Preempt at the IMDS simulator, so the agent's detection time is inside
  every figure.
- **kubectl, defaults**: ``kubectl drain NODE --ignore-daemonsets --delete-emptydir-data
  --force``, the pinned ``.venv/bin/kubectl``. t0 is the moment it is started: kubectl is spared
  any detection time.
- **kubectl, tuned** for a notice (``--tuned-for``, default 30 s): the same plus
  ``--grace-period`` (the grace spotguard's first requests carry: notice - 2 s safety margin -
  1 s headroom, rounded down), ``--timeout=<notice>s`` and ``--disable-eviction``. kubectl has
  no flag for its client-side rate limit (client-go's 5 requests/s, burst 10; the request log
  shows its evictions or deletes at 5/s and its reads of the pods at another 5/s beside them),
  so it cannot be tuned away. kubectl talks to the emulator through ``JsonBodyProxy``, which
  re-encodes the protobuf ``DeleteOptions`` of ``--disable-eviction`` as JSON.

The node (``cluster_workloads.loaded_node`` plus checkpointing steps, the whole making ``size``
pods): 3 DaemonSet pods; a ReplicaSet behind a PodDisruptionBudget (``maxUnavailable: 25%``);
emptyDir, unmanaged and batch pods with grace periods from 0 to 60 s; Kubeflow pipeline steps
(60 s grace); and ``size // 10`` checkpointing steps, each with a real ``spotguard.step``
endpoint on 127.0.0.1. Every ordinary pod stops 1 s after it is asked to leave; a pipeline step
takes 3 s (it saves its work, whether the agent asked it to checkpoint or SIGTERM did). A spare
node takes the ReplicaSet replacements, which become Ready 0.5 s after they are created.

Measured, per run, from the emulator's request log (the API server's view) and from watches of
the pods and PodDisruptionBudgets that the bench keeps open (its own requests excluded):

- cordon: t0 to the answer to the tool's first node write (spotguard: cordon + taint + record in
  one write; kubectl: the cordon patch);
- all asked: t0 to the answer to the last pod's first request to leave (eviction or delete; a
  PodDisruptionBudget refusal counts: the pod was asked; a 429 injected as API Priority and
  Fairness does not). A step that checkpointed and exited by itself needs no request;
- empty: t0 to the moment the last pod to move was seen gone (deleted, or finished);
- left at 10 s / 30 s: pods to move still on the node at t0 + 10 s and t0 + 30 s (NotBefore:
  the VM goes then);
- PDB violations: pods covered by a budget that were removed while it allowed no disruption
  (see ``pdb_violations``);
- API requests the tool sent from t0 to the end of its drain, and the most in any one second;
- others' CPU: cores that processes other than the bench and its children used during the run
  (``/proc/stat`` less our own CPU time), to tell a quiet machine from a busy one.

Further scenarios: ``apf`` (spotguard, 10 s notice, 429 with ``Retry-After: 1`` on half of the
first eviction requests), ``stuck-pdb`` (110 pods; replacements never become Ready, so the budget
stays exhausted: spotguard deletes what the deadline forces, kubectl is stopped at NotBefore),
and ``detection`` (injection at the simulator to the agent's ``notice_new`` log line, many
injections at random moments of the 1 s poll).

Every child is stopped on the way out, on errors, Ctrl-C and SIGTERM too. Progress goes to
stderr, the tables to stdout. The defaults take about 13 min on 2 cores. Usage::

    .venv/bin/python bench/drain_vs_kubectl.py [--sizes 30 110 250] [--rounds 2]
        [--extra-rounds 1] [--scenarios main apf stuck-pdb detection] [--detections 60]
        [--tuned-for 30 [10]]

Results and how to read them: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import json
import math
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from spotguard.sim.child_process import child_env, free_port, spawn, stop_process, wait_ready
from spotguard.sim.cluster import write_kubeconfig
from spotguard.sim.cluster_process import ClusterProcess
from spotguard.sim.cluster_scenarios import owner_ref, pod_object
from spotguard.sim.cluster_workloads import loaded_node, spare_node, spot_node_name
from spotguard.sim.imds_process import ImdsProcess
from spotguard.sim.kube_settings import STOP_AFTER_ANNOTATION
from spotguard.step.endpoint import CheckpointEndpoint, CheckpointRequest, Respond

NODE = spot_node_name(0)  # its providerID names the IMDS VM aks-spot-12345678-vmss_0
SAFETY_MARGIN_S = 2.0  # the agent's default
GRACE_HEADROOM_S = 1.0  # the agent's default
QUICK_STOP_S = 1.0
STEP_STOP_S = 3.0
STEP_LABEL = "workflows.argoproj.io/workflow"
STEP_NS = "steps-0"
TOKEN = "bench-token"  # noqa: S105 (this bench's steps only)
BENCH_UA = "spotguard-bench"
KUBECTL = Path(sys.executable).parent / "kubectl"
KUBECTL_DRAIN = ("--ignore-daemonsets", "--delete-emptydir-data", "--force")
#: kubectl with defaults has no timeout: stop it after this long (it never needed half of it).
KUBECTL_CAP_S = 600.0
START_TIMEOUT = 30.0
#: after /readyz, before the notice: the agent is past its start-up work and polling steadily
SETTLE_S = 2.0
#: how long after NotBefore the bench keeps watching a spotguard drain that has not ended
AFTER_NOT_BEFORE_S = 3.0
#: how long after kubectl exits the bench waits for pods already terminating to go
AFTER_KUBECTL_S = 5.0
CALL = aiohttp.ClientTimeout(total=10)
DEADLINES = (10, 30)
#: share of the first eviction requests answered 429 in the ``apf`` scenario
APF_SHARE = 0.5

Job = Callable[[Path], Awaitable["Run"]]


# --- the node --------------------------------------------------------------------------------


class Steps:
    """Checkpointing steps: real endpoints that save for ``STEP_STOP_S``, answer, then exit."""

    def __init__(self, count: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.url = ""  # the emulator, once known
        self.session: aiohttp.ClientSession | None = None
        self.asked = 0
        self._lock = threading.Lock()
        self.endpoints = {
            f"ckpt-step-{i:03d}": CheckpointEndpoint(
                host="127.0.0.1",
                port=0,
                path="/checkpoint",
                token=TOKEN,
                on_request=self._handler(f"ckpt-step-{i:03d}"),
            )
            for i in range(count)
        }

    def _handler(self, name: str) -> Any:
        def on_request(request: CheckpointRequest, respond: Respond) -> None:
            with self._lock:
                self.asked += 1
            time.sleep(STEP_STOP_S)  # saving
            respond(200, {"location": f"file:///bench/{name}", "bytes": 1})
            # The step exits with its yield code: the kubelet marks the pod Failed.
            asyncio.run_coroutine_threadsafe(self._exited(name), self.loop)

        return on_request

    async def _exited(self, name: str) -> None:
        assert self.session is not None
        async with self.session.patch(
            f"{self.url}/api/v1/namespaces/{STEP_NS}/pods/{name}/status",
            data=json.dumps({"status": {"phase": "Failed"}}),
            headers={"Content-Type": "application/merge-patch+json"},
        ) as resp:
            await resp.read()

    def objects(self) -> list[dict[str, Any]]:
        workflow = owner_ref("Workflow", "ckpt", api_version="argoproj.io/v1alpha1")
        objects: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": STEP_NS}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "spotguard-checkpoint", "namespace": STEP_NS},
                "data": {"token": base64.b64encode(TOKEN.encode()).decode()},
            },
        ]
        for name, endpoint in self.endpoints.items():
            objects.append(
                pod_object(
                    STEP_NS,
                    name,
                    NODE,
                    "127.0.0.1",
                    labels={STEP_LABEL: "ckpt"},
                    owner=workflow,
                    grace=60,
                    annotations={
                        "spotguard.io/checkpoint": "http",
                        "spotguard.io/checkpoint-port": str(endpoint.port),
                        STOP_AFTER_ANNOTATION: f"{STEP_STOP_S:g}",
                    },
                    volumes=[{"name": "kfp-launcher", "emptyDir": {}}],
                )
            )
        return objects

    def start(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.start()

    def stop(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.stop()


def checkpoint_steps(size: int) -> int:
    return max(2, size // 10)


def node_objects(size: int, steps: Steps) -> list[dict[str, Any]]:
    objects = loaded_node(0, size - len(steps.endpoints), stop_after=QUICK_STOP_S)
    for obj in objects:
        meta = obj["metadata"]
        if obj.get("kind") == "Pod" and STEP_LABEL in meta.get("labels", {}):
            meta["annotations"][STOP_AFTER_ANNOTATION] = f"{STEP_STOP_S:g}"
    return [*objects, *steps.objects(), spare_node(1)]


# --- what the bench sees of the cluster ----------------------------------------------------


def wall(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rv(obj: dict[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("resourceVersion") or 0)


@dataclass
class PodSeen:
    namespace: str
    name: str
    labels: dict[str, str]
    node: str
    daemonset: bool
    #: resourceVersion and time of the first change that started its removal
    leaving_rv: int | None = None
    #: deleted, or finished (a step that exited by itself)
    gone_at: float | None = None


@dataclass(frozen=True)
class BudgetVersion:
    rv: int
    key: tuple[str, str]
    allowed: int
    healthy: int
    desired: int


class Observer:
    """Watches of every pod and PodDisruptionBudget, from the list's resourceVersion on."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session
        self.pods: dict[str, PodSeen] = {}  # by uid
        self.budgets: dict[tuple[str, str], dict[str, str]] = {}  # matchLabels
        self.versions: list[BudgetVersion] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.changed = asyncio.Event()

    async def start(self) -> None:
        pods = await self._get("/api/v1/pods")
        now = time.time()
        for pod in pods.get("items") or []:
            self._pod("ADDED", pod, now)
        budgets = await self._get("/apis/policy/v1/poddisruptionbudgets")
        for budget in budgets.get("items") or []:
            self._budget(budget)
        self._tasks = [
            asyncio.create_task(self._watch("/api/v1/pods", rv(pods), self._pod_event)),
            asyncio.create_task(
                self._watch("/apis/policy/v1/poddisruptionbudgets", rv(budgets), self._pdb_event)
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _get(self, path: str) -> dict[str, Any]:
        async with self.session.get(self.url + path) as resp:
            body: dict[str, Any] = await resp.json()
            return body

    async def _watch(self, path: str, version: int, handle: Any) -> None:
        query = {"watch": "true", "resourceVersion": str(version), "timeoutSeconds": "3600"}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.session.get(self.url + path, params=query, timeout=timeout) as resp:
            async for line in resp.content:
                if line.strip():
                    event = json.loads(line)
                    handle(event["type"], event["object"])

    def _pod_event(self, kind: str, obj: dict[str, Any]) -> None:
        self._pod(kind, obj, time.time())
        self.changed.set()

    def _pod(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid", "")
        seen = self.pods.get(uid)
        if seen is None:
            owners = meta.get("ownerReferences") or []
            seen = self.pods[uid] = PodSeen(
                namespace=meta.get("namespace", ""),
                name=meta.get("name", ""),
                labels=dict(meta.get("labels") or {}),
                node=(obj.get("spec") or {}).get("nodeName") or "",
                daemonset=any(o.get("kind") == "DaemonSet" and o.get("controller") for o in owners),
            )
        if seen.leaving_rv is None and (kind == "DELETED" or meta.get("deletionTimestamp")):
            seen.leaving_rv = rv(obj)
        phase = (obj.get("status") or {}).get("phase")
        if seen.gone_at is None and (kind == "DELETED" or phase in ("Succeeded", "Failed")):
            seen.gone_at = now

    def _pdb_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self._budget(obj)

    def _budget(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        self.budgets[key] = dict(selector)
        status = obj.get("status") or {}
        self.versions.append(
            BudgetVersion(
                rv=rv(obj),
                key=key,
                allowed=int(status.get("disruptionsAllowed") or 0),
                healthy=int(status.get("currentHealthy") or 0),
                desired=int(status.get("desiredHealthy") or 0),
            )
        )

    def to_move(self) -> dict[str, PodSeen]:
        """Pods a drain must move: on the node, not DaemonSet pods, not finished already."""
        return {
            uid: p
            for uid, p in self.pods.items()
            if p.node == NODE and not p.daemonset and p.gone_at is None
        }

    def budget_of(self, pod: PodSeen) -> tuple[str, str] | None:
        for key, labels in self.budgets.items():
            if key[0] == pod.namespace and labels.items() <= pod.labels.items():
                return key
        return None

    def budget_before(self, key: tuple[str, str], version: int) -> BudgetVersion | None:
        """The budget's status as it was just before the change ``version``."""
        best = None
        for v in self.versions:
            if v.key == key and v.rv < version and (best is None or v.rv > best.rv):
                best = v
        return best

    async def wait_for(self, done: Any, until: float) -> None:
        """Until ``done()`` or the wall-clock time ``until``; looks at least every 50 ms."""
        while not done() and time.time() < until:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(0.05, until - time.time()))


# --- one run's figures -----------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    size: int
    notice: float | None
    to_move: int
    cordon_s: float | None
    asked_s: float | None
    empty_s: float | None
    left: dict[int, int]
    violations: int
    deleted: int  # pods removed by a DELETE (not an eviction)
    requests: int
    peak_rps: int
    throttled: int = 0  # 429s from injected faults
    detect_s: float | None = None  # spotguard: injection to its notice_new log line
    result: str = ""
    #: CPU that processes other than this bench and its children used during the run, in cores
    others_cores: float = 0.0


def peak_per_second(times: list[float]) -> int:
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def asks_to_leave(record: dict[str, Any]) -> bool:
    if record.get("resource") != "pods":
        return False
    eviction = record.get("verb") == "create" and record.get("subresource") == "eviction"
    delete = record.get("verb") == "delete" and not record.get("subresource")
    return eviction or delete


def answered(record: dict[str, Any]) -> float:
    return wall(record["at"]) + float(record["duration_ms"]) / 1000


def pdb_violations(
    observer: Observer, moved: dict[str, PodSeen], first_accepted: dict[tuple[str, str], str]
) -> int:
    """Pods covered by a budget that were removed while it allowed no disruption.

    A pod's removal starts with the change that gives it a ``deletionTimestamp`` (or deletes
    it); the budget's status just before that change (the latest version with a lower
    resourceVersion: the emulator's disruption controller rewrites the status synchronously after
    every pod change, so the order is exact) says whether a disruption was allowed:

    - removed by a DELETE (no budget is consulted): a violation if ``disruptionsAllowed`` was 0;
    - removed by an accepted eviction: the API server charged the budget first, so this can only
      be a violation if ``currentHealthy`` was already below ``desiredHealthy`` (never seen;
      counted to check the emulator).
    """
    count = 0
    for pod in moved.values():
        key = observer.budget_of(pod)
        how = first_accepted.get((pod.namespace, pod.name))
        if key is None or pod.leaving_rv is None or how is None:
            continue
        before = observer.budget_before(key, pod.leaving_rv)
        if before is None:
            continue
        deleted_without_budget = how == "delete" and before.allowed <= 0
        evicted_below_budget = how == "eviction" and before.healthy < before.desired
        count += deleted_without_budget or evicted_below_budget
    return count


def figures(
    tool: str,
    size: int,
    notice: float | None,
    observer: Observer,
    moved: dict[str, PodSeen],
    records: list[dict[str, Any]],
    t0: float,
    end: float,
) -> Run:
    ours = [r for r in records if BENCH_UA not in r.get("user_agent", "") and wall(r["at"]) <= end]
    cordons = [
        answered(r)
        for r in ours
        if r.get("resource") == "nodes"
        and r.get("name") == NODE
        and r.get("verb") in ("patch", "update")
        and r.get("status") == 200
    ]
    first_ask: dict[tuple[str, str], float] = {}
    first_accepted: dict[tuple[str, str], str] = {}
    for r in sorted(ours, key=answered):
        if not asks_to_leave(r) or r.get("fault") is not None:
            continue
        key = (r.get("namespace") or "", r.get("name") or "")
        first_ask.setdefault(key, answered(r))
        if int(r["status"]) < 300:
            first_accepted.setdefault(key, "eviction" if r.get("subresource") else "delete")
    asked: list[float] = []
    never = 0
    for pod in moved.values():
        at = first_ask.get((pod.namespace, pod.name))
        if at is not None:
            asked.append(at)
        elif pod.gone_at is None:
            never += 1  # neither asked nor gone by itself
    gone = [p.gone_at for p in moved.values()]
    left = {
        d: sum(1 for g in gone if g is None or g > t0 + d) for d in DEADLINES
    }  # fmt: skip
    return Run(
        tool=tool,
        size=size,
        notice=notice,
        to_move=len(moved),
        cordon_s=min(cordons) - t0 if cordons else None,
        asked_s=None if never or not asked else max(asked) - t0,
        empty_s=None if any(g is None for g in gone) else max(g for g in gone if g) - t0,
        left=left,
        violations=pdb_violations(observer, moved, first_accepted),
        deleted=sum(1 for how in first_accepted.values() if how == "delete"),
        requests=len(ours),
        peak_rps=peak_per_second([wall(r["at"]) for r in ours]),
        throttled=sum(1 for r in ours if r.get("fault") is not None and r["status"] == 429),
    )


# --- a freshly seeded cluster per run ---------------------------------------------------------


@dataclass
class Seeded:
    cluster: ClusterProcess
    session: aiohttp.ClientSession
    steps: Steps
    observer: Observer
    tmp: Path


@contextlib.asynccontextmanager
async def seeded(size: int, tmp: Path) -> AsyncIterator[Seeded]:
    async with contextlib.AsyncExitStack() as stack:
        cluster = ClusterProcess(
            kubeconfig=tmp / "kubeconfig",
            scenario="empty",
            env=child_env(),
            stderr=tmp / "emulator.log",
        )
        stack.push_async_callback(cluster.stop)
        await cluster.start(timeout=START_TIMEOUT)
        session = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=CALL, trust_env=False, headers={"User-Agent": BENCH_UA})
        )
        steps = Steps(checkpoint_steps(size))
        steps.url, steps.session = cluster.url, session
        steps.start()
        stack.callback(steps.stop)
        await cluster.control.seed(*node_objects(size, steps))
        observer = Observer(cluster.url, session)
        stack.push_async_callback(observer.stop)
        yield Seeded(cluster, session, steps, observer, tmp)


# --- spotguard ---------------------------------------------------------------------------------


@dataclass
class AgentLog:
    lines: list[dict[str, Any]] = field(default_factory=list)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    new: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():  # to the end: a full pipe would block the agent
            with contextlib.suppress(json.JSONDecodeError):
                line = json.loads(raw)
                if not isinstance(line, dict):
                    continue
                self.lines.append(line)
                if line.get("event") in ("notice_drained", "notice_drain_incomplete"):
                    self.drained.set()
                elif line.get("event") == "notice_new":
                    self.new.set()

    def first(self, event: str, event_id: str | None = None) -> dict[str, Any] | None:
        for line in self.lines:
            if line.get("event") == event and (
                event_id is None or str(line.get("event_id", "")).lower() == event_id.lower()
            ):
                return line
        return None


@contextlib.asynccontextmanager
async def agent_on(
    seeded_: Seeded, stack_tmp: Path
) -> AsyncIterator[tuple[ImdsProcess, asyncio.subprocess.Process, AgentLog]]:
    async with contextlib.AsyncExitStack() as stack:
        imds = ImdsProcess(log_level="warning", env=child_env(), stderr=stack_tmp / "imds.log")
        stack.push_async_callback(imds.stop)
        await imds.start(timeout=START_TIMEOUT)
        port = free_port()
        env = {
            "SPOTGUARD_NODE_NAME": NODE,
            "SPOTGUARD_IMDS_URL": imds.url,
            "SPOTGUARD_HTTP_ADDRESS": f"127.0.0.1:{port}",
            "KUBECONFIG": str(seeded_.cluster.kubeconfig),
        }
        agent = await spawn(
            "run",
            env=child_env(env),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert agent.stderr is not None
        log = AgentLog()
        reader = asyncio.create_task(log.follow(agent.stderr))
        stack.push_async_callback(_finish, reader)
        stack.push_async_callback(stop_process, agent)  # runs first: before its API server goes
        await wait_ready(agent, f"http://127.0.0.1:{port}", START_TIMEOUT)
        await asyncio.sleep(SETTLE_S)
        yield imds, agent, log


async def _finish(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(task, 5.0)


async def run_spotguard(
    size: int,
    notice: float,
    tmp: Path,
    *,
    throttle_share: float = 0.0,
    stuck_budget: bool = False,
    label: str = "",
) -> Run:
    async with seeded(size, tmp) as s, agent_on(s, tmp) as (imds, agent, log):
        await s.observer.start()
        moved = s.observer.to_move()
        if throttle_share:
            await s.cluster.control.add_fault(
                match={"verb": "create", "resource": "pods", "subresource": "eviction"},
                status=429,
                retry_after=1,
                times=max(1, round(len(moved) * throttle_share)),
                message="Too many requests, please try again later.",
            )
        if stuck_budget:
            # Replacements never become Ready: the budget stays exhausted (a cluster waiting for
            # a scale-up looks like this).
            await s.cluster.control.update_settings(ready_after=3600.0)
        mark = await s.cluster.control.mark()
        await asyncio.sleep(random.uniform(0.0, 1.0))  # a random moment of the agent's poll
        t0 = time.time()
        event = await imds.control.inject("Preempt", not_before_in=notice)
        until = t0 + notice + AFTER_NOT_BEFORE_S
        await s.observer.wait_for(
            lambda: log.drained.is_set() and all(p.gone_at for p in moved.values()), until
        )
        end = time.time()
        records = await s.cluster.control.requests(since=mark)
        if agent.returncode is not None:
            raise RuntimeError(f"the agent exited with {agent.returncode}")
    run = figures(
        label or f"spotguard, {notice:g} s notice",
        size,
        notice,
        s.observer,
        moved,
        records,
        t0,
        end,
    )
    new = log.first("notice_new", str(event["event_id"]))
    run.detect_s = None if new is None else wall(str(new["timestamp"])) - t0
    drained = log.first("notice_drained") or log.first("notice_drain_incomplete")
    run.result = "no drain logged" if drained is None else str(drained.get("result"))
    return run


# --- kubectl -------------------------------------------------------------------------------------


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(data: bytes) -> Iterable[tuple[int, int | bytes]]:
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i : i + length], i + length
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield number, value


def _text(value: int | bytes | None, default: str = "") -> str:
    return value.decode() if isinstance(value, bytes) else default


def delete_options_json(body: bytes) -> dict[str, Any]:
    """kubectl's protobuf ``DeleteOptions`` (``k8s\\0`` + runtime.Unknown) as its JSON form."""
    unknown = dict(_fields(body[4:]))
    type_meta_raw, raw = unknown.get(1), unknown.get(2)
    type_meta = dict(_fields(type_meta_raw)) if isinstance(type_meta_raw, bytes) else {}
    options: dict[str, Any] = {
        "kind": _text(type_meta.get(2), "DeleteOptions"),
        "apiVersion": _text(type_meta.get(1), "v1"),
    }
    dry_run = []
    for number, value in _fields(raw if isinstance(raw, bytes) else b""):
        if number == 1 and isinstance(value, int):
            options["gracePeriodSeconds"] = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 2 and isinstance(value, bytes):
            pre = dict(_fields(value))
            options["preconditions"] = {
                key: _text(pre[n]) for n, key in ((1, "uid"), (2, "resourceVersion")) if n in pre
            }
        elif number == 3 and isinstance(value, int):
            options["orphanDependents"] = bool(value)
        elif number == 4 and isinstance(value, bytes):
            options["propagationPolicy"] = value.decode()
        elif number == 5 and isinstance(value, bytes):
            dry_run.append(value.decode())
    if dry_run:
        options["dryRun"] = dry_run
    return options


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}


class JsonBodyProxy:
    """Between kubectl and the emulator, which reads JSON and YAML bodies only.

    kubectl sends the ``DeleteOptions`` of ``--disable-eviction`` as protobuf; this re-encodes
    them as JSON and passes everything else through untouched (User-Agent included, so the
    emulator's request log still shows kubectl). One extra hop on 127.0.0.1, well under 1 ms per
    request, for requests that kubectl spaces 200 ms apart.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.converted = 0
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            connector=aiohttp.TCPConnector(limit=0),
        )
        runner = self._runner = web.ServerRunner(web.Server(self._handle))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if request.method == "DELETE" and body.startswith(b"k8s\x00"):
            body = json.dumps(delete_options_json(body)).encode()
            headers["Content-Type"] = "application/json"
            self.converted += 1
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body or None,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    response.headers.add(key, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


async def kubectl(
    home: Path, kubeconfig: Path, *args: str
) -> tuple[asyncio.subprocess.Process, list[str]]:
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", ""),
        "KUBECONFIG": str(kubeconfig),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    command = [
        str(KUBECTL),
        *("--kubeconfig", str(kubeconfig), "--cache-dir", str(home / "cache")),
        *args,
    ]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    return proc, command


def tuned_args(notice: float) -> list[str]:
    grace = math.floor(notice - SAFETY_MARGIN_S - GRACE_HEADROOM_S)
    return [f"--grace-period={grace}", f"--timeout={notice:g}s", "--disable-eviction"]


async def run_kubectl(
    size: int,
    label: str,
    extra: Sequence[str],
    tmp: Path,
    *,
    notice: float | None = None,
    stop_after: float = KUBECTL_CAP_S,
    stuck_budget: bool = False,
) -> Run:
    async with seeded(size, tmp) as s:
        proxy = JsonBodyProxy(s.cluster.url)
        await proxy.start()
        try:
            kubeconfig = tmp / "kubectl-kubeconfig"
            write_kubeconfig(kubeconfig, proxy.url)
            home = tmp / "home"
            home.mkdir(exist_ok=True)
            # A warm discovery cache, as on an operator's machine.
            warm, _ = await kubectl(home, kubeconfig, "api-resources", "-o", "name")
            await warm.communicate()
            await s.observer.start()
            moved = s.observer.to_move()
            if stuck_budget:
                await s.cluster.control.update_settings(ready_after=3600.0)
            mark = await s.cluster.control.mark()
            t0 = time.time()
            proc, _ = await kubectl(home, kubeconfig, "drain", NODE, *KUBECTL_DRAIN, *extra)
            try:
                _, err = await asyncio.wait_for(proc.communicate(), stop_after)
                result = f"exit {proc.returncode}"
                if proc.returncode:
                    result += f": {err.decode(errors='replace').strip().splitlines()[-1][:80]}"
            except TimeoutError:
                proc.kill()
                await proc.wait()
                result = f"stopped at {stop_after:g} s"
            end = time.time()
            # Pods kubectl has started to remove still go after it gives up.
            await s.observer.wait_for(
                lambda: all(p.gone_at or p.leaving_rv is None for p in moved.values()),
                end + AFTER_KUBECTL_S,
            )
            records = await s.cluster.control.requests(since=mark)
        finally:
            await proxy.stop()
    run = figures(label, size, notice, s.observer, moved, records, t0, end)
    run.result = result
    return run


# --- detection latency -----------------------------------------------------------------------


async def measure_detection(count: int, tmp: Path) -> list[float]:
    """Injection at the simulator to the agent's ``notice_new`` line, Freeze events (the
    default policy only records them), each injected at a random moment of the 1 s poll."""
    latencies = []
    async with seeded(30, tmp) as s, agent_on(s, tmp) as (imds, _agent, log):
        for _ in range(count):
            await asyncio.sleep(random.uniform(0.0, 1.0))
            t0 = time.time()
            event = await imds.control.inject("Freeze", not_before_in=300)
            event_id = str(event["event_id"])
            line = None
            for _ in range(50):
                line = log.first("notice_new", event_id)
                if line is not None:
                    break
                log.new.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(log.new.wait(), 0.1)
            if line is None:
                raise RuntimeError(f"the agent did not see event {event_id} within 5 s")
            latencies.append(wall(str(line["timestamp"])) - t0)
            await imds.control.cancel(event_id)
    return latencies


# --- tables --------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def med_p99(values: Sequence[float | None], scale: float, fmt: str, total: int) -> str:
    known = [v * scale for v in values if v is not None]
    if not known:
        return "never"
    text = f"{format(statistics.median(known), fmt)} / {format(percentile(known, 0.99), fmt)}"
    missing = total - len(known)
    return text if not missing else f"{text} (never in {missing})"


def median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) and known else None


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print()
    print(title)
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


HEADERS = [
    "pods",
    "tool",
    "runs",
    "cordon ms",
    "all asked ms",
    "empty s",
    "left @10 s",
    "left @30 s",
    "PDB viol.",
    "deletes",
    "API req",
    "peak req/s",
    "others' CPU",
    "result",
]


def left_cell(runs: Sequence[Run], deadline: int) -> str:
    if any(r.notice is not None and r.notice < deadline for r in runs):
        return "-"  # the VM is gone at its NotBefore already
    values = [r.left[deadline] for r in runs]
    return f"{statistics.median(values):g} / {max(values)}"


def med_max(values: Sequence[int]) -> str:
    return f"{statistics.median(values):g} / {max(values)}"


def row(runs: Sequence[Run]) -> list[str]:
    n = len(runs)
    return [
        str(runs[0].size),
        runs[0].tool,
        str(n),
        med_p99([r.cordon_s for r in runs], 1000, ".1f", n),
        med_p99([r.asked_s for r in runs], 1000, ".0f", n),
        med_p99([r.empty_s for r in runs], 1, ".2f", n),
        left_cell(runs, 10),
        left_cell(runs, 30),
        med_max([r.violations for r in runs]),
        med_max([r.deleted for r in runs]),
        med_max([r.requests for r in runs]),
        med_max([r.peak_rps for r in runs]),
        f"{max(r.others_cores for r in runs):.2f}",
        ", ".join(sorted({r.result for r in runs})),
    ]


def ratio(slow: float | None, fast: float | None) -> str:
    if slow is None:
        return "kubectl never"
    if fast is None or fast <= 0:
        return "-"
    return f"{slow / fast:.0f}x" if slow / fast >= 10 else f"{slow / fast:.1f}x"


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"machine: {os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


# --- is the machine otherwise busy? -----------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_sample() -> tuple[float, float, float]:
    """Wall time, CPU seconds the whole machine has been busy (steal included), and CPU seconds
    of this process and its children that have exited (every child of a run has, at its end)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS  # all but idle and iowait
    times = os.times()
    ours = times.user + times.system + times.children_user + times.children_system
    return time.time(), busy, ours


async def measured(job: Job, tmp: Path) -> Run:
    """Run ``job`` in a temporary directory; note how much CPU others used meanwhile."""
    wall0, busy0, ours0 = cpu_sample()
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        run = await job(Path(d))
    wall1, busy1, ours1 = cpu_sample()
    run.others_cores = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / max(wall1 - wall0, 1e-3)
    return run


# --- main --------------------------------------------------------------------------------------


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def brief(run: Run) -> str:
    def s(v: float | None) -> str:
        return "never" if v is None else f"{v:.3f}"

    return (
        f"cordon {s(run.cordon_s)} asked {s(run.asked_s)} empty {s(run.empty_s)} "
        f"left@10 {run.left[10]} left@30 {run.left[30]} viol {run.violations} "
        f"del {run.deleted} req {run.requests} peak {run.peak_rps} 429s {run.throttled} "
        f"detect {s(run.detect_s)} [{run.result}] others {run.others_cores:.2f} cores"
    )


def main_jobs(size: int, tuned_for: Sequence[float]) -> list[tuple[str, Job]]:
    jobs: list[tuple[str, Job]] = [
        ("spotguard, 30 s notice", functools.partial(run_spotguard, size, 30.0)),
        ("spotguard, 10 s notice", functools.partial(run_spotguard, size, 10.0)),
        ("kubectl, defaults", functools.partial(run_kubectl, size, "kubectl, defaults", [])),
    ]
    for notice in tuned_for:
        label = f"kubectl, tuned for {notice:g} s"
        jobs.append(
            (label, functools.partial(run_kubectl, size, label, tuned_args(notice), notice=notice))
        )
    return jobs


async def main_scenario(
    sizes: list[int], rounds: int, tuned_for: Sequence[float], tmp: Path
) -> dict[int, dict[str, list[Run]]]:
    results: dict[int, dict[str, list[Run]]] = {}
    for size in sizes:
        jobs = main_jobs(size, tuned_for)
        order = [name for name, _ in jobs]
        by_tool: dict[str, list[Run]] = {name: [] for name in order}
        for i in range(rounds):
            # Alternate: every other round runs the tools in the reverse order.
            for name, job in jobs if i % 2 == 0 else reversed(jobs):
                run = await measured(job, tmp)
                by_tool[name].append(run)
                note(f"  {size} pods, round {i + 1}/{rounds}, {name}: {brief(run)}")
        results[size] = by_tool
    return results


def report_main(results: dict[int, dict[str, list[Run]]]) -> None:
    rows = [row(runs) for by_tool in results.values() for runs in by_tool.values()]
    print_table(
        "drain of one node, t0 = the notice (spotguard: injected at IMDS; kubectl: started); "
        "median / p99 (times) or median / max (counts) over the runs; others' CPU: cores used "
        "by other processes during the busiest run",
        HEADERS,
        rows,
    )
    ratio_rows = []
    for size, by_tool in results.items():
        sg = by_tool["spotguard, 30 s notice"]
        seen = [
            None if r.asked_s is None or r.detect_s is None else r.asked_s - r.detect_s for r in sg
        ]
        cordoned = [
            None if r.cordon_s is None or r.detect_s is None else r.cordon_s - r.detect_s
            for r in sg
        ]
        for name, kc in by_tool.items():
            if not name.startswith("kubectl"):
                continue
            ratio_rows.append(
                [
                    str(size),
                    f"{name} / spotguard, 30 s notice",
                    ratio(median([r.cordon_s for r in kc]), median([r.cordon_s for r in sg])),
                    ratio(median([r.cordon_s for r in kc]), median(cordoned)),
                    ratio(median([r.asked_s for r in kc]), median([r.asked_s for r in sg])),
                    ratio(median([r.asked_s for r in kc]), median(seen)),
                    ratio(median([r.empty_s for r in kc]), median([r.empty_s for r in sg])),
                    ratio(
                        statistics.median([r.peak_rps for r in sg]),
                        statistics.median([r.peak_rps for r in kc]),
                    ),
                ]
            )
    print_table(
        "ratios of medians: how many times longer kubectl took (peak req/s: how many times "
        "more spotguard sent)",
        [
            "pods",
            "compared",
            "cordon",
            "cordon, spotguard from its detection",
            "all asked",
            "all asked, spotguard from its detection",
            "empty",
            "peak req/s",
        ],
        ratio_rows,
    )


def report_runs(title: str, runs: Sequence[Run]) -> None:
    groups: dict[tuple[int, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.size, run.tool), []).append(run)
    rows = []
    for group in groups.values():
        cells = row(group)
        cells.insert(-1, f"{statistics.median([r.throttled for r in group]):g}")
        rows.append(cells)
    print_table(title, [*HEADERS[:-1], "429s", HEADERS[-1]], rows)


def report_detection(latencies: list[float], runs: Sequence[Run]) -> float | None:
    rows = []
    p99 = None
    for label, values in (
        ("Freeze events, injected at random moments", latencies),
        ("the Preempts of the runs above", [r.detect_s for r in runs if r.detect_s is not None]),
    ):
        if values:
            ms = [v * 1000 for v in values]
            p99 = max(p99 or 0.0, percentile(ms, 0.99))
            rows.append(
                [
                    label,
                    str(len(ms)),
                    f"{min(ms):.0f}",
                    f"{statistics.median(ms):.0f}",
                    f"{percentile(ms, 0.99):.0f}",
                    f"{max(ms):.0f}",
                ]
            )
    if rows:
        print_table(
            "detection: injection at the IMDS simulator to the agent's notice_new log line "
            "(1 s poll)",
            ["notices", "count", "min ms", "median ms", "p99 ms", "max ms"],
            rows,
        )
    return p99


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report_targets(
    main: dict[int, dict[str, list[Run]]],
    apf: Sequence[Run],
    stuck: Sequence[Run],
    detection_p99_ms: float | None,
) -> None:
    rows = []
    if 110 in main:
        sg10 = main[110]["spotguard, 10 s notice"]
        kd = main[110]["kubectl, defaults"]
        empties = [r.empty_s for r in sg10]
        worst = max((e for e in empties if e is not None), default=None)
        ok = all(e is not None and e <= 10 for e in empties) and all(r.left[10] > 0 for r in kd)
        rows.append(
            [
                "110 pods: empty by a 10 s deadline where kubectl defaults leave pods",
                f"spotguard (10 s notice) empty at {worst if worst is None else f'{worst:.2f}'} s "
                f"at worst ({sum(e is not None for e in empties)}/{len(empties)} runs); "
                f"kubectl defaults leave {statistics.median([r.left[10] for r in kd]):g} "
                f"(median) at 10 s",
                met(ok),
            ]
        )
    for size, by_tool in main.items():
        ours = median([r.asked_s for r in by_tool["spotguard, 30 s notice"]])
        theirs = median([r.asked_s for r in by_tool["kubectl, defaults"]])
        factor = None if ours is None or theirs is None else theirs / ours
        rows.append(
            [
                f"{size} pods: all asked >= 20x sooner than kubectl defaults",
                f"{factor:.1f}x (medians {theirs:.2f} s / {ours:.2f} s)"
                if factor is not None and theirs is not None and ours is not None
                else "not measurable",
                # The target is the 110-pod node's. Other sizes are reported beside it: below
                # ~60 pods kubectl's burst of 10 hides its rate limit and detection dominates.
                met(factor is not None and factor >= 20) if size == 110 else "reference",
            ]
        )
    sg_main = [
        r for by_tool in main.values() for n, rs in by_tool.items() for r in rs if "spot" in n
    ]
    if sg_main or stuck:
        forced = [r for r in stuck if r.tool.startswith("spotguard")]
        rows.append(
            [
                "PDB violations only where the deadline forced them",
                f"{sum(r.violations for r in sg_main)} in {len(sg_main)} spotguard drains; "
                f"stuck budget: {sum(r.violations for r in forced)} in {len(forced)} drains "
                f"(pods deleted after PDB refusals: {sum(r.deleted for r in forced)})",
                met(
                    sum(r.violations for r in sg_main) == 0
                    and all(r.violations <= r.deleted for r in forced)
                ),
            ]
        )
    everyone = [
        *(r for by_tool in main.values() for rs in by_tool.values() for r in rs),
        *apf,
        *stuck,
    ]
    peaks = {
        tool: max(r.peak_rps for r in everyone if r.tool.startswith(tool))
        for tool in ("spotguard", "kubectl")
        if any(r.tool.startswith(tool) for r in everyone)
    }
    if peaks:
        rows.append(
            [
                "peak API request rate stated",
                ", ".join(f"{tool}: {peak} req/s at most" for tool, peak in peaks.items()),
                "stated",
            ]
        )
    if apf:
        ok = all(
            r.empty_s is not None and r.notice and r.empty_s <= r.notice - SAFETY_MARGIN_S
            for r in apf
        )
        rows.append(
            [
                "APF 429s absorbed without missing the deadline",
                f"{sum(r.throttled for r in apf)} 429s in {len(apf)} drains; node empty by "
                f"{max((r.empty_s or math.inf) for r in apf):.2f} s at worst (deadline 8 s)",
                met(ok),
            ]
        )
    if detection_p99_ms is not None:
        rows.append(
            [
                "detection latency p99 <= poll interval + 50 ms",
                f"p99 {detection_p99_ms:.0f} ms (target 1050 ms)",
                met(detection_p99_ms <= 1050),
            ]
        )
    if rows:
        print_table("targets (issue 10) measured here", ["target", "measured", "status"], rows)


async def amain(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # SIGTERM cancels like Ctrl-C does, so the exit stacks stop every child.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    scenarios = set(args.scenarios)
    note(machine())
    with tempfile.TemporaryDirectory(prefix="spotguard-vs-kubectl-") as tmp_name:
        tmp = Path(tmp_name)
        main: dict[int, dict[str, list[Run]]] = {}
        if "main" in scenarios:
            main = await main_scenario(args.sizes, args.rounds, args.tuned_for, tmp)
        apf: list[Run] = []
        if "apf" in scenarios:
            for i in range(args.extra_rounds):
                for size in args.sizes:
                    job: Job = functools.partial(
                        run_spotguard,
                        size,
                        10.0,
                        throttle_share=APF_SHARE,
                        label="spotguard, 10 s notice, APF 429s",
                    )
                    run = await measured(job, tmp)
                    apf.append(run)
                    note(f"  apf {size} pods, round {i + 1}: {brief(run)}")
        stuck: list[Run] = []
        if "stuck-pdb" in scenarios:
            jobs: list[Job] = [
                functools.partial(
                    run_spotguard, 110, 30.0, stuck_budget=True, label="spotguard, 30 s notice"
                ),
                functools.partial(
                    run_kubectl,
                    110,
                    "kubectl, defaults (stopped at NotBefore)",
                    [],
                    stop_after=30.0,
                    stuck_budget=True,
                ),
            ]
            for i in range(args.extra_rounds):
                for job in jobs if i % 2 == 0 else reversed(jobs):
                    run = await measured(job, tmp)
                    stuck.append(run)
                    note(f"  stuck-pdb 110 pods, round {i + 1}, {run.tool}: {brief(run)}")
        latencies: list[float] = []
        others = []
        if "detection" in scenarios:
            wall0, busy0, ours0 = cpu_sample()
            with tempfile.TemporaryDirectory(dir=tmp) as d:
                latencies = await measure_detection(args.detections, Path(d))
            wall1, busy1, ours1 = cpu_sample()
            others.append(max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (wall1 - wall0))
    everything = [*(r for t in main.values() for rs in t.values() for r in rs), *apf, *stuck]
    others += [r.others_cores for r in everything]
    print(machine())
    if others:
        print(
            f"other processes on this machine used {statistics.fmean(others):.2f} cores on "
            f"average while this ran ({max(others):.2f} at most during one run, of "
            f"{os.cpu_count()})"
        )
    print(
        f"pods stop {QUICK_STOP_S:g} s after they are asked to leave, pipeline steps "
        f"{STEP_STOP_S:g} s; {args.rounds} round(s), tools alternating"
    )
    if main:
        report_main(main)
    if apf:
        report_runs(
            f"API Priority and Fairness: 429 + Retry-After: 1 on {APF_SHARE:.0%} of the first "
            "eviction requests, 10 s notice",
            apf,
        )
    if stuck:
        report_runs(
            "stuck budget: the PDB's replacements never become Ready (30 s notice, 110 pods)",
            stuck,
        )
    sg_runs = [r for by_tool in main.values() for runs in by_tool.values() for r in runs]
    p99 = report_detection(latencies, [*sg_runs, *apf, *stuck])
    report_targets(main, apf, stuck, p99)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 110, 250])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the main comparison")
    parser.add_argument(
        "--extra-rounds", type=int, default=1, help="rounds of the apf and stuck-pdb scenarios"
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=["main", "apf", "stuck-pdb", "detection"],
        choices=["main", "apf", "stuck-pdb", "detection"],
    )
    parser.add_argument(
        "--tuned-for",
        type=float,
        nargs="+",
        default=[30.0],
        help="notices to tune kubectl for (one row each; default 30)",
    )
    parser.add_argument("--detections", type=int, default=60, help="injections for detection")
    args = parser.parse_args()
    if min(args.sizes) < 20 or args.rounds < 1 or args.extra_rounds < 1:
        parser.error("--sizes >= 20, --rounds >= 1 and --extra-rounds >= 1, please")
    try:
        return asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        note("interrupted; every child process has been stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
