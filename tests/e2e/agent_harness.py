"""Real ``spotguard run`` processes against the IMDS simulator and the emulated cluster.

One async context manager, ``agent_harness``, starts (all as child processes, all on 127.0.0.1):

- ``spotguard simulate-imds`` serving one or more VMs of one scale set;
- ``spotguard simulate-cluster`` with a scenario and optional seeded objects;
- one ``spotguard run`` per spot node, configured only through the documented interface
  (``SPOTGUARD_NODE_NAME``, ``SPOTGUARD_IMDS_URL``, ``SPOTGUARD_HTTP_ADDRESS``, ``KUBECONFIG``)
  plus whatever a test adds.

It records what happens to the nodes and pods from watches (wall-clock times, so they compare
with IMDS ``NotBefore``), keeps every agent's JSON log lines, and, when the test body fails,
prints each agent's log tail so the failure explains itself. Full logs stay in ``tmp_path``.

Node ``i`` of the spot pool is ``aks-spot-12345678-vmss00000<i>`` and its VM, as IMDS names it,
``aks-spot-12345678-vmss_<i>`` (the ``spot-node`` scenario's providerIDs say so).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from spotguard.sim.child_process import child_env, free_port, spawn, stop_process
from spotguard.sim.cluster_process import ClusterProcess
from spotguard.sim.imds_process import ImdsControl, ImdsProcess
from tests.rbac_recorder import RECORDER

T = TypeVar("T")

NOTICES_ANNOTATION = "spotguard.io/notices"
TAINT_PREFIX = "spotguard.io/"
#: Our own reads carry this, so the emulator's request log and faults can tell them apart.
HARNESS_UA = "spotguard-e2e-harness"
CALL_TIMEOUT = aiohttp.ClientTimeout(total=5)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
LOG_TAIL = 80


def node_name(index: int) -> str:
    return f"aks-spot-12345678-vmss{index:06d}"


def vm_name(index: int) -> str:
    return f"aks-spot-12345678-vmss_{index}"


def parse_time(value: str) -> float:
    """RFC 3339 (``Z`` or offset) → POSIX seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- the IMDS simulator (``ImdsProcess``; tests drive it through ``ImdsControl``) -----------


def not_before(event: Mapping[str, Any]) -> float:
    """An IMDS event's ``NotBefore`` as POSIX seconds."""
    return parse_time(str(event["not_before_rfc3339"]))


# --- the agent -------------------------------------------------------------------------------


class Agent:
    """One ``spotguard run`` child process; survives kill and restart with the same settings."""

    def __init__(self, *, node: str, vm: str, env: Mapping[str, str], log_path: Path) -> None:
        self.node = node
        self.vm = vm
        self.port = free_port()
        # Nothing from the developer's shell may configure the agent behind the test's back.
        self.env = child_env(
            {**env, "SPOTGUARD_NODE_NAME": node, "SPOTGUARD_HTTP_ADDRESS": f"127.0.0.1:{self.port}"}
        )
        self.log_path = log_path
        #: every log line of every run of this agent, parsed (``{"raw": ...}`` if not JSON)
        self.logs: list[dict[str, Any]] = []
        self.runs = 0
        self.exit_codes: list[int] = []
        self._reaped = 0  # the run whose exit code is recorded
        self._proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._session = aiohttp.ClientSession(timeout=CALL_TIMEOUT, trust_env=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def start(self, *, wait_ready: bool = True, timeout: float = START_TIMEOUT) -> None:
        self.runs += 1
        self._proc = await spawn(
            "run", env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        run = self.runs
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self._proc.stderr, run, "stderr")),
            asyncio.create_task(self._read(self._proc.stdout, run, "stdout")),
        ]
        if wait_ready:
            await self.wait_ready(timeout)

    async def _read(self, stream: asyncio.StreamReader, run: int, name: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as file:
            while raw := await stream.readline():
                text = raw.decode("utf-8", "replace").rstrip("\n")
                file.write(f"[run {run} {name}] {text}\n")
                file.flush()
                try:
                    line = json.loads(text)
                    if not isinstance(line, dict):
                        line = {"raw": text}
                except json.JSONDecodeError:
                    line = {"raw": text}
                line["_run"] = run
                line["_stream"] = name
                line["_received"] = time.time()
                self.logs.append(line)

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until ``/readyz`` answers 200; fails early (with the log) if the agent exits."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while loop.time() < until:
            if not self.running:
                await self._drain_readers()
                code = self._proc.returncode if self._proc else None
                raise AssertionError(f"agent {self.node} exited with {code} before it was ready")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                if await self.status("/readyz") == 200:
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"agent {self.node} not ready within {timeout}s")

    async def _drain_readers(self) -> None:
        for reader in self._readers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 5)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code (SIGKILL after ``timeout``)."""
        proc = self._proc
        if proc is None:
            return 0
        if proc.returncode is not None and self._reaped == self.runs:
            return proc.returncode
        code = await stop_process(proc, timeout, sig)
        await self._drain_readers()
        self.exit_codes.append(code)
        self._reaped = self.runs
        return code

    async def kill(self) -> int:
        return await self.stop(signal.SIGKILL)

    async def restart(self, *, wait_ready: bool = True) -> None:
        if self.running:
            await self.stop()
        await self.start(wait_ready=wait_ready)

    async def close(self) -> None:
        await self.stop()
        await self._session.close()

    # --- HTTP endpoints ----------------------------------------------------------------------

    async def status(self, path: str) -> int:
        async with self._session.get(self.base_url + path) as resp:
            await resp.read()
            return resp.status

    async def get(self, path: str) -> tuple[int, str]:
        async with self._session.get(self.base_url + path) as resp:
            return resp.status, await resp.text()

    async def metrics(self) -> dict[str, float]:
        """Every sample of ``/metrics`` as ``{'name{label="v",...}': value}`` (labels sorted)."""
        code, text = await self.get("/metrics")
        assert code == 200, f"/metrics answered {code}: {text[:500]}"
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample_key(sample.name, sample.labels)] = sample.value
        return samples

    async def metric(self, name: str, **labels: str) -> float | None:
        return (await self.metrics()).get(sample_key(name, labels))

    # --- logs ----------------------------------------------------------------------------------

    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """Log lines whose ``event`` is ``name`` and whose fields match ``fields``."""
        return [
            line
            for line in self.logs
            if line.get("event") == name and all(line.get(k) == v for k, v in fields.items())
        ]

    def errors(self) -> list[dict[str, Any]]:
        """Lines logged at error level or above, and anything that is not a JSON line."""
        return [
            line
            for line in self.logs
            if "raw" in line or str(line.get("level", "")).lower() in {"error", "critical"}
        ]

    def tail(self, count: int = LOG_TAIL) -> str:
        lines = []
        for line in self.logs[-count:]:
            shown = {k: v for k, v in line.items() if not k.startswith("_")}
            lines.append(f"  [run {line['_run']}] " + json.dumps(shown, default=str)[:600])
        return "\n".join(lines) or "  (no output)"


def sample_key(name: str, labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


# --- the cluster, as the harness sees it -----------------------------------------------------


@dataclass
class PodLife:
    """What the watch saw of one pod: when it appeared, was asked to stop, and disappeared."""

    namespace: str
    name: str
    uid: str
    node: str
    owner_kind: str | None
    first_seen: float
    terminating_at: float | None = None
    grace: int | None = None
    gone_at: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def evictable(self) -> bool:
        return self.owner_kind != "DaemonSet"


@dataclass
class NodeSnapshot:
    at: float
    obj: dict[str, Any]

    @property
    def unschedulable(self) -> bool:
        return bool((self.obj.get("spec") or {}).get("unschedulable"))

    @property
    def notices(self) -> dict[str, Any]:
        return notices_of(self.obj)

    @property
    def taints(self) -> list[dict[str, Any]]:
        return list((self.obj.get("spec") or {}).get("taints") or [])


def notices_of(node: Mapping[str, Any]) -> dict[str, Any]:
    raw = ((node.get("metadata") or {}).get("annotations") or {}).get(NOTICES_ANNOTATION)
    if not raw:
        return {}
    notices: dict[str, Any] = json.loads(raw)["notices"]
    return notices


def spotguard_taints(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    taints = (node.get("spec") or {}).get("taints") or []
    return [t for t in taints if str(t.get("key", "")).startswith(TAINT_PREFIX)]


def _owner_kind(pod: Mapping[str, Any]) -> str | None:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return str(ref.get("kind"))
    return None


class Cluster:
    """Reads of the emulated API server (plain JSON) plus watches that timestamp every change."""

    def __init__(self, process: ClusterProcess) -> None:
        self.process = process
        self.url = process.url
        self.control = process.control
        self._session = aiohttp.ClientSession(
            timeout=CALL_TIMEOUT, headers={"User-Agent": HARNESS_UA}, trust_env=False
        )
        self.pods: dict[str, PodLife] = {}  # by uid
        self.nodes: dict[str, list[NodeSnapshot]] = {}
        self._watches: list[asyncio.Task[None]] = []
        self._listed: set[int] = set()  # ids of the watch tasks that have their initial list
        self._all_listed = asyncio.Event()
        self.changed = asyncio.Event()

    async def close(self) -> None:
        for task in self._watches:
            task.cancel()
        for task in self._watches:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._session.close()

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        async with self._session.get(self.url + path, params=params) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise AssertionError(f"GET {path}: {resp.status} {data.get('message')}")
            return data

    async def node(self, name: str) -> dict[str, Any]:
        return await self.get(f"/api/v1/nodes/{name}")

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch, as another actor (an operator, AKS's remediator) would send."""
        headers = {"Content-Type": "application/merge-patch+json"}
        url = f"{self.url}/api/v1/nodes/{name}"
        async with self._session.patch(url, data=json.dumps(patch), headers=headers) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise AssertionError(f"PATCH node {name}: {resp.status} {data.get('message')}")
            return data

    async def pods_on(self, node: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/pods", fieldSelector=f"spec.nodeName={node}")
        items: list[dict[str, Any]] = data["items"]
        return items

    async def spotguard_events(
        self, node: str | None = None, event_id: str | None = None
    ) -> list[dict[str, Any]]:
        """core/v1 Events from spotguard, on ``node`` and about ``event_id`` if given."""
        query = {"fieldSelector": "source=spotguard"}
        data = await self.get("/api/v1/namespaces/default/events", **query)
        found = []
        for event in data["items"]:
            about = (event.get("involvedObject") or {}).get("name")
            annotations = (event.get("metadata") or {}).get("annotations") or {}
            if node is not None and about != node:
                continue
            if event_id is not None and annotations.get("spotguard.io/event-id") != event_id:
                continue
            found.append(event)
        return found

    async def agent_requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Request-log entries that are not the harness's own reads."""
        return [r for r in await self.control.requests(since) if r["user_agent"] != HARNESS_UA]

    async def agent_user_agent(self) -> str:
        for entry in await self.agent_requests():
            if entry["user_agent"]:
                return str(entry["user_agent"])
        raise AssertionError("no request from the agent in the emulator's log yet")

    # --- watches -----------------------------------------------------------------------------

    def watch(self, nodes: Iterable[str]) -> None:
        """Follow the pods on ``nodes`` and the Node objects, from now on."""
        self._watches.append(asyncio.create_task(self._follow("/api/v1/nodes", {}, self._node)))
        for node in nodes:
            query = {"fieldSelector": f"spec.nodeName={node}"}
            self._watches.append(
                asyncio.create_task(self._follow("/api/v1/pods", query, self._pod))
            )

    async def watching(self, timeout: float = 10.0) -> None:
        """Until every watch has its initial list (so nothing before ``watch`` is missed)."""
        await asyncio.wait_for(self._all_listed.wait(), timeout)

    async def _follow(
        self,
        path: str,
        query: Mapping[str, str],
        on_event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        me = id(asyncio.current_task())
        version: str | None = None
        while True:
            try:
                if version is None:
                    listing = await self.get(path, **query)
                    version = listing["metadata"]["resourceVersion"]
                    present = set()
                    for obj in listing["items"]:
                        present.add(obj["metadata"]["uid"])
                        on_event("ADDED", obj)
                    if path.endswith("/pods"):
                        self._forget_pods_except(present, query)
                    self._listed.add(me)
                    if len(self._listed) >= len(self._watches):
                        self._all_listed.set()
                params = {
                    **query,
                    "watch": "true",
                    "resourceVersion": str(version),
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": "10",
                }
                # The server ends the watch after 10 s; the client allows for a little more.
                timeout = aiohttp.ClientTimeout(total=15)
                async with self._session.get(self.url + path, params=params, timeout=timeout) as r:
                    if r.status != 200:
                        version = None
                        await asyncio.sleep(0.1)
                        continue
                    async for raw in r.content:
                        event = json.loads(raw)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            version = None  # expired: relist
                            break
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if event.get("type") != "BOOKMARK":
                            on_event(str(event["type"]), obj)
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
                await asyncio.sleep(0.1)

    def _forget_pods_except(self, present: set[str], query: Mapping[str, str]) -> None:
        node = query["fieldSelector"].split("=", 1)[1]
        now = time.time()
        for life in self.pods.values():
            if life.node == node and life.uid not in present and life.gone_at is None:
                life.gone_at = now

    def _pod(self, kind: str, pod: dict[str, Any]) -> None:
        now = time.time()
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        life = self.pods.get(uid)
        if life is None:
            if kind == "DELETED":
                return
            life = PodLife(
                namespace=str(meta.get("namespace")),
                name=str(meta.get("name")),
                uid=uid,
                node=str((pod.get("spec") or {}).get("nodeName")),
                owner_kind=_owner_kind(pod),
                first_seen=now,
            )
            self.pods[uid] = life
        if meta.get("deletionTimestamp") and life.terminating_at is None:
            life.terminating_at = now
            life.grace = meta.get("deletionGracePeriodSeconds")
        if kind == "DELETED" and life.gone_at is None:
            life.gone_at = now
        self.changed.set()

    def _node(self, kind: str, node: dict[str, Any]) -> None:
        name = str((node.get("metadata") or {}).get("name"))
        self.nodes.setdefault(name, []).append(NodeSnapshot(time.time(), node))
        self.changed.set()

    # --- what the watches saw ----------------------------------------------------------------

    def pods_of(self, node: str, *, before: float | None = None) -> list[PodLife]:
        """Evictable pods (not DaemonSet pods) that were on ``node`` before ``before``."""
        return [
            p
            for p in self.pods.values()
            if p.node == node and p.evictable and (before is None or p.first_seen < before)
        ]

    def first(self, node: str, predicate: Callable[[NodeSnapshot], bool]) -> NodeSnapshot | None:
        """The first recorded state of ``node`` that satisfies ``predicate``."""
        return next((s for s in self.nodes.get(node, []) if predicate(s)), None)

    def phase_at(self, node: str, event_id: str, phase: str) -> float | None:
        """When the node's annotation first recorded ``phase`` for ``event_id``."""
        snap = self.first(node, lambda s: (s.notices.get(event_id) or {}).get("phase") == phase)
        return snap.at if snap else None


# --- the harness ------------------------------------------------------------------------------


@dataclass
class Harness:
    tmp: Path
    imds: ImdsControl
    cluster: Cluster
    agents: dict[str, Agent] = field(default_factory=dict)

    def agent(self, index: int = 0) -> Agent:
        return self.agents[node_name(index)]

    async def wait_for(
        self,
        predicate: Callable[[], Awaitable[T | None] | T | None],
        *,
        timeout: float,
        what: str,
        interval: float = 0.05,
    ) -> T:
        """Poll ``predicate`` (sync or async) until it returns something truthy."""
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
                suffix = f" (last error: {last_error!r})" if last_error else ""
                raise AssertionError(f"timed out after {timeout}s waiting for {what}{suffix}")
            await asyncio.sleep(interval)

    def diagnostics(self) -> str:
        parts = []
        for agent in self.agents.values():
            state = "running" if agent.running else "not running"
            parts.append(
                f"--- agent {agent.node}: {state}, runs {agent.runs}, exit codes "
                f"{agent.exit_codes}, full log {agent.log_path} ---\n{agent.tail()}"
            )
        return "\n".join(parts)


@asynccontextmanager
async def agent_harness(
    tmp_path: Path,
    *,
    nodes: Sequence[int] = (0,),
    agents: Sequence[int] | None = None,
    scenario: str = "spot-node",
    seed: Sequence[Mapping[str, Any]] = (),
    emulator: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    start_agents: bool = True,
) -> AsyncIterator[Harness]:
    """IMDS serving the VMs of ``nodes``, the cluster, and an agent on each node of ``agents``
    (default: all of ``nodes``), each ready (``/readyz`` 200) unless ``start_agents`` is False.

    ``emulator``: settings for ``PATCH /_sim/settings`` (e.g. ``stop_after``); ``env``: extra
    agent settings. Pods and Nodes on ``nodes`` are watched from before the agents start.
    """
    agent_indices = tuple(nodes if agents is None else agents)
    imds = ImdsProcess([vm_name(i) for i in nodes], env=child_env(), stderr=tmp_path / "imds.log")
    # Its whole request log, written as it stops: the e2e tests' RBAC recording.
    requests = RECORDER.request_log(tmp_path)
    process = ClusterProcess(
        kubeconfig=tmp_path / "kubeconfig",
        scenario=scenario,
        stderr=tmp_path / "emulator.log",
        env=child_env(),
        request_log=requests,
    )
    harness: Harness | None = None
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(imds.stop, STOP_TIMEOUT)
        stack.push_async_callback(process.stop)
        await asyncio.gather(imds.start(START_TIMEOUT), process.start())
        RECORDER.expect(requests)
        if seed:
            await process.control.seed(*seed)
        if emulator:
            await process.control.update_settings(**emulator)
        cluster = Cluster(process)
        stack.push_async_callback(cluster.close)
        cluster.watch(node_name(i) for i in nodes)
        await cluster.watching()
        harness = Harness(tmp=tmp_path, imds=imds.control, cluster=cluster)
        for i in agent_indices:
            agent = Agent(
                node=node_name(i),
                vm=vm_name(i),
                env={
                    "KUBECONFIG": str(process.kubeconfig),
                    "SPOTGUARD_IMDS_URL": imds.urls[vm_name(i)],
                    **(env or {}),
                },
                log_path=tmp_path / f"agent-{i}.log",
            )
            harness.agents[agent.node] = agent
            stack.push_async_callback(agent.close)
        try:
            if start_agents:
                await asyncio.gather(*(a.start() for a in harness.agents.values()))
            yield harness
        except BaseException:
            # Shown by pytest with the failure: what each agent said.
            print(harness.diagnostics())
            raise


# --- assertions shared by the agent tests ----------------------------------------------------

#: The agent's default: deadline = NotBefore - 2 s.
SAFETY_MARGIN = 2.0
#: Watch delivery and timer jitter between a pod's deletion and our seeing it.
OBSERVATION_SLACK = 0.5


def reason_counts(events: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        counts[str(event["reason"])] = counts.get(str(event["reason"]), 0) + 1
    return counts


async def wait_node_drained(
    h: Harness, node: str, event_id: str, pods: Sequence[PodLife], *, timeout: float
) -> float:
    """Until the annotation says drained and every pod in ``pods`` is gone; returns the time
    the last of them disappeared."""

    def settled() -> str | None:
        for phase in ("drained", "failed"):
            if h.cluster.phase_at(node, event_id, phase) is not None:
                return phase
        return None

    phase = await h.wait_for(
        settled, timeout=timeout, what=f"{node}'s annotation to record {event_id} as drained"
    )
    if phase == "failed":
        left = [p.key for p in pods if p.gone_at is None]
        outcome = [line for agent in h.agents.values() for line in agent.events("drain_finished")]
        raise AssertionError(
            f"{node}'s drain of {event_id} failed; pods left: {left}; drain outcome: {outcome}"
        )
    await h.wait_for(
        lambda: all(p.gone_at is not None for p in pods),
        timeout=timeout,
        what=f"every evictable pod to leave {node}: "
        + ", ".join(p.key for p in pods if p.gone_at is None),
    )
    return max(p.gone_at for p in pods if p.gone_at is not None)


def writes(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Request-log entries that would change the cluster."""
    return [e for e in entries if e["verb"] not in {"get", "list", "watch"}]
