"""``spotguard demo``: the real agent drains a loaded spot node inside a Preempt notice.

Three child processes, all on 127.0.0.1: the IMDS simulator (one VM), the emulated Kubernetes
API server (a spot node with ~20 pods of the mix a real drain meets, and a spare node that takes
the replacements) and ``spotguard run`` itself, configured as a DaemonSet pod would be. The demo
then plays Azure: it schedules a Preempt for the VM and prints, as it happens, what the agent does
to the node. It reads the cluster (watches of the node and its pods, and the emulator's request
log, which serves as an audit log) for what happened, and the agent's JSON log for what the agent
meant (notice seen, its own margin). A summary table follows; the exit code is 0 when every pod
that had to move was gone before the deadline (``NotBefore`` minus the safety margin), else 1.

Every child is stopped on the way out, on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import math
import os
import signal
import socket
import sys
import tempfile
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from spotguard.clock import Clock, SystemClock
from spotguard.config import Settings, format_duration
from spotguard.kube.client import JSON, KubeClient, KubeError, connect
from spotguard.sim.cluster_process import ClusterProcess, ClusterProcessError
from spotguard.sim.cluster_scenarios import owner_ref, pod_object
from spotguard.sim.cluster_workloads import loaded_node, spare_node, spot_node_name
from spotguard.sim.imds_vm import default_vm_name
from spotguard.sim.kube_settings import STOP_AFTER_ANNOTATION

NODE = spot_node_name(0)
VM = default_vm_name(0)
NAMESPACE = "ml"
#: pods on the node: 20 from the loaded-node mix, plus an unmanaged pod and a second step
LOADED_PODS = 20
CHILD_START_TIMEOUT = 30.0
AGENT_READY_TIMEOUT = 30.0
CALL_TIMEOUT = aiohttp.ClientTimeout(total=5)
#: After NotBefore the VM is gone; a node not empty by then is not going to be.
GIVE_UP_AFTER_NOT_BEFORE = 1.0
#: Lines from the watches, the request log and the agent's log arrive with different delays;
#: each is held this long and the held lines are printed in time order.
HOLD = 0.4
TICK = 0.1
WARNING_LEVELS = frozenset({"warning", "error", "critical"})
AGENT_LOG_TAIL = 15
#: Timeline lines wrap here (the time stamp comes first).
WIDTH = 86


# --- child processes -------------------------------------------------------------------------


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    # The user's SPOTGUARD_* settings are for the demo command itself, not for its children.
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SPOTGUARD_")}
    env.update(extra)
    return env


async def start_child(
    *args: str, env: Mapping[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Start ``python -m spotguard <args>`` and wait for its one JSON "listening" line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spotguard",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=_child_env(env or {}),
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), CHILD_START_TIMEOUT)
        ready: dict[str, Any] = json.loads(line)
    except (TimeoutError, json.JSONDecodeError):
        await stop_child(proc)
        raise RuntimeError(f"spotguard {args[0]} did not start") from None
    return proc, ready


async def stop_child(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def free_port() -> int:
    # The agent's HTTP address takes no port 0; the race with another process is acceptable.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the node -------------------------------------------------------------------------------


def demo_objects(notice: float, speedup: float = 1.0) -> list[dict[str, Any]]:
    """The spot node with its pods, and a spare spot node for the replacements.

    Ordinary pods stop 1 s after SIGTERM; pipeline steps take a quarter of the notice (saving
    a checkpoint) — whatever their grace periods (60 s) say; ``speedup`` divides both.
    """
    quick = 1.0 / speedup
    step_stop = max(1.0, notice / 4) / speedup
    objects = loaded_node(0, LOADED_PODS, namespace=NAMESPACE, stop_after=quick)
    namespace = f"{NAMESPACE}-0"
    workflow = owner_ref("Workflow", "pipeline-0", api_version="argoproj.io/v1alpha1")
    objects.append(
        pod_object(
            namespace,
            "pipeline-0-step-1",
            NODE,
            "10.100.0.200",
            labels={"workflows.argoproj.io/workflow": "pipeline-0"},
            owner=workflow,
            grace=60,
            volumes=[{"name": "kfp-launcher", "emptyDir": {}}],
        )
    )
    objects.append(
        pod_object(namespace, "debug-shell", NODE, "10.100.0.201", labels={"run": "debug"}, grace=5)
    )
    for obj in objects:
        if obj.get("kind") != "Pod":
            continue
        annotations = obj["metadata"].setdefault("annotations", {})
        step = "workflows.argoproj.io/workflow" in obj["metadata"]["labels"]
        annotations[STOP_AFTER_ANNOTATION] = f"{step_stop if step else quick:g}"
    objects.append(spare_node(1))
    return objects


def _is_daemonset_pod(pod: Mapping[str, Any]) -> bool:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or ():
        if isinstance(ref, dict) and ref.get("controller") and ref.get("kind") == "DaemonSet":
            return True
    return False


# --- what the demo sees ------------------------------------------------------------------------


@dataclass
class PodSeen:
    key: str  # namespace/name
    daemonset: bool
    asked_t: float | None = None
    grace: int | None = None
    gone_t: float | None = None
    #: scheduled onto the node after the notice (only possible while it is not cordoned)
    arrived: bool = False


@dataclass
class Observed:
    """Everything the summary needs, in seconds since the Preempt was scheduled (t = 0)."""

    pods: dict[str, PodSeen] = field(default_factory=dict)  # by uid: at t = 0, and arrivals
    evicted: dict[str, float] = field(default_factory=dict)  # key -> t of the accepted eviction
    deleted: dict[str, float] = field(default_factory=dict)  # key -> t of the accepted delete
    pdb_refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    seen_t: float | None = None
    cordoned_t: float | None = None
    agent_margin: float | None = None
    agent_lines: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=AGENT_LOG_TAIL)
    )
    agent_warnings: int = 0

    def moving(self) -> list[PodSeen]:
        return [p for p in self.pods.values() if not p.daemonset]

    def empty_t(self) -> float | None:
        moving = self.moving()
        if not moving or any(p.gone_t is None for p in moving):
            return None
        return max(p.gone_t for p in moving if p.gone_t is not None)

    def all_asked_t(self) -> float | None:
        moving = self.moving()
        if not moving or any(p.asked_t is None for p in moving):
            return None
        return max(p.asked_t for p in moving if p.asked_t is not None)

    def how(self, key: str) -> str:
        if key in self.deleted:
            return "deleted after PDB refusals" if self.pdb_refusals[key] else "deleted"
        if key in self.evicted:
            return "evicted"
        return "asked to leave"


class Timeline:
    """Prints ``t+  1.2s  text`` lines in time order, each once ``now() - t >= HOLD``.

    The sources lag by less than ``HOLD``, so lines print in order. An entry renders when
    printed, to any number of lines (so it can say what the slower sources learned by then)."""

    def __init__(self, out: TextIO, now: Callable[[], float]) -> None:
        self._out = out
        self._now = now
        self._held: list[tuple[float, Callable[[], list[str]]]] = []

    def add(self, t: float, text: Callable[[], list[str]] | str) -> None:
        render = text if callable(text) else (lambda: [text])
        self._held.append((t, render))

    def flush(self, *, everything: bool = False) -> None:
        until = math.inf if everything else self._now() - HOLD
        ready = sorted((h for h in self._held if h[0] <= until), key=lambda h: h[0])
        if not ready:
            return
        self._held = [h for h in self._held if h[0] > until]
        for t, render in ready:
            for line in render():
                wrapped = textwrap.wrap(line, width=WIDTH, subsequent_indent="    ")
                for i, part in enumerate(wrapped):
                    stamp = f"t+{t:5.1f}s" if i == 0 else " " * 9
                    self._out.write(f"  {stamp}  {part}\n")
        self._out.flush()


def _names(pods: list[PodSeen]) -> str:
    return ", ".join(p.key.split("/", 1)[1] for p in pods)


class Demo:
    """Turns what the followers report into timeline lines and the ``Observed`` record."""

    def __init__(self, *, out: TextIO, t0_wall: datetime, t0_loop: float) -> None:
        self.t0_wall = t0_wall
        self.t0_loop = t0_loop
        self.loop = asyncio.get_running_loop()
        self.seen = Observed()
        self.timeline = Timeline(out, self.t_loop)
        self.changed = asyncio.Event()
        self._asked: dict[int, list[PodSeen]] = {}
        self._gone: dict[int, list[PodSeen]] = {}

    def t_loop(self) -> float:
        return self.loop.time() - self.t0_loop

    def t_wall(self, stamp: str) -> float:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        return (moment - self.t0_wall).total_seconds()

    # --- the pods and the node, from watches ---------------------------------------------------

    def adopt(self, pods: list[JSON]) -> None:
        for pod in pods:
            meta = pod.get("metadata") or {}
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            uid = str(meta.get("uid"))
            self.seen.pods[uid] = PodSeen(key=key, daemonset=_is_daemonset_pod(pod))

    def on_pod(self, kind: str, pod: JSON) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        seen = self.seen.pods.get(uid)
        t = self.t_loop()
        if seen is None and kind != "DELETED" and not meta.get("deletionTimestamp"):
            # Only while the node is not cordoned: the node is not empty until it goes too.
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            seen = PodSeen(key=key, daemonset=_is_daemonset_pod(pod), arrived=True)
            self.seen.pods[uid] = seen
            self.timeline.add(t, f"scheduled onto the node being drained: {key}")
        if seen is None or seen.gone_t is not None:
            return
        if seen.asked_t is None and (meta.get("deletionTimestamp") or kind == "DELETED"):
            # A pod with a grace of 0 goes at once: its deletion is its only event.
            seen.asked_t = t
            grace = meta.get("deletionGracePeriodSeconds")
            seen.grace = grace if isinstance(grace, int) else 0
            self._batch(self._asked, t, seen, self._asked_lines)
        if kind == "DELETED":
            seen.gone_t = t
            self._batch(self._gone, t, seen, self._gone_lines)
        self.changed.set()

    def _batch(
        self,
        batches: dict[int, list[PodSeen]],
        t: float,
        seen: PodSeen,
        render: Callable[[list[PodSeen]], list[str]],
    ) -> None:
        """Pods that change within the same 0.1 s share a timeline entry."""
        key = round(t * 10)
        if key not in batches:
            batches[key] = []
            self.timeline.add(t, functools.partial(render, batches[key]))
        batches[key].append(seen)

    def _asked_lines(self, pods: list[PodSeen]) -> list[str]:
        # Rendered when printed: by then the request log has said how each was asked.
        groups: dict[tuple[str, int | None], list[PodSeen]] = {}
        for pod in pods:
            groups.setdefault((self.seen.how(pod.key), pod.grace), []).append(pod)
        return [
            f"{how} (grace {grace}s): {_names(group)}" for (how, grace), group in groups.items()
        ]

    def _gone_lines(self, pods: list[PodSeen]) -> list[str]:
        moving = [p for p in pods if not p.daemonset]
        lines = []
        if moving:
            last = max(p.gone_t or 0.0 for p in pods)
            left = sum(1 for p in self.seen.moving() if p.gone_t is None or p.gone_t > last)
            lines.append(f"gone: {_names(moving)}" + (f" ({left} to go)" if left else ""))
            if not left:
                lines.append("the node is empty")
        if len(moving) < len(pods):
            lines.append(f"gone (DaemonSet pods): {_names([p for p in pods if p.daemonset])}")
        return lines

    def on_node(self, node: JSON) -> None:
        if self.seen.cordoned_t is None and (node.get("spec") or {}).get("unschedulable"):
            self.seen.cordoned_t = t = self.t_loop()
            taints = [
                f"{x.get('key')}={str(x.get('value', ''))[:8]}…"
                for x in (node.get("spec") or {}).get("taints") or ()
                if str(x.get("key", "")).startswith("spotguard.io/")
            ]
            self.timeline.add(
                t, "node cordoned" + (f", tainted {', '.join(taints)}" if taints else "")
            )
            self.changed.set()

    def on_pod_event(self, kind: str, pod: JSON) -> None:
        if kind != "RELISTED":
            self.on_pod(kind, pod)
            return
        present = set(pod["present"])
        for uid, seen in self.seen.pods.items():
            if uid not in present and seen.gone_t is None:
                self.on_pod("DELETED", {"metadata": {"uid": uid}})

    def on_node_event(self, kind: str, node: JSON) -> None:
        if kind != "RELISTED":
            self.on_node(node)

    # --- the emulator's request log ---------------------------------------------------------

    def on_request(self, entry: Mapping[str, Any]) -> None:
        verb, resource = entry.get("verb"), entry.get("resource")
        sub, status = entry.get("subresource"), entry.get("status")
        key = f"{entry.get('namespace')}/{entry.get('name')}"
        t = self.t_wall(str(entry["at"]))
        if resource == "pods" and verb == "create" and sub == "eviction":
            if status == 201:
                self.seen.evicted.setdefault(key, t)
            elif status == 429:
                self.seen.pdb_refusals[key] += 1
                if self.seen.pdb_refusals[key] == 1:
                    self.timeline.add(t, f"{key}: eviction refused by its PDB, retrying")
        elif resource == "pods" and verb == "delete" and not sub and status == 200:
            self.seen.deleted.setdefault(key, t)

    # --- the agent's log ----------------------------------------------------------------------

    def on_agent_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip()
        if not text:
            return
        self.seen.agent_lines.append(text)
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            return
        if not isinstance(line, dict):
            return
        stamp = line.get("timestamp")
        t = self.t_wall(stamp) if isinstance(stamp, str) else self.t_loop()
        event, level = str(line.get("event", "")), str(line.get("level", ""))
        if level in WARNING_LEVELS:
            self.seen.agent_warnings += 1
        if event == "notice_new" and line.get("kind") == "preempt":
            self.seen.seen_t = t
            self.timeline.add(t, "agent: notice seen" + _deadline_in(line, self))
        elif event == "drain_planned":
            self.timeline.add(
                t,
                f"agent: drain planned: {line.get('to_move')} pods to move, "
                f"{line.get('skipped')} left in place",
            )
        elif event == "pod_delete_after_pdb":
            self.timeline.add(t, f"agent: {line.get('pod')}: PDB still refuses, deleting it")
        elif event == "notice_drained":
            margin = line.get("margin_s")
            self.seen.agent_margin = float(margin) if isinstance(margin, int | float) else None
            shown = "" if margin is None else f", {margin:.1f}s before its deadline"
            self.timeline.add(t, f"agent: drained{shown}")
        elif event == "acknowledge_success":
            self.timeline.add(t, "agent: acknowledged the event (it may start now)")
        elif event == "notice_updated" and line.get("status") == "started":
            self.timeline.add(t, "agent: the event has Started")
        elif level in WARNING_LEVELS:
            self.timeline.add(t, f"agent {_brief(line)}")
        self.changed.set()


def _deadline_in(line: Mapping[str, Any], demo: Demo) -> str:
    deadline = line.get("deadline")
    if not isinstance(deadline, str):
        return ""
    return f", deadline at t+{demo.t_wall(deadline):.1f}s"


# --- followers ---------------------------------------------------------------------------------


async def _follow(
    kube: KubeClient,
    path: str,
    query: Mapping[str, str],
    resource_version: str,
    on_event: Callable[[str, JSON], None],
) -> None:
    """Watch from ``resource_version``; after a failure, relist (as ADDED) and watch again."""
    while True:
        try:
            stream = kube.watch(
                path,
                query={**query, "resourceVersion": resource_version, "allowWatchBookmarks": True},
                timeout_seconds=30,
            )
            async with contextlib.aclosing(stream):
                async for event in stream:
                    meta = event.object.get("metadata") or {}
                    resource_version = str(meta.get("resourceVersion") or resource_version)
                    if event.type != "BOOKMARK":
                        on_event(event.type, event.object)
        except KubeError:
            await asyncio.sleep(0.2)
            with contextlib.suppress(KubeError):
                listing = await kube.request("GET", path, query=query)
                resource_version = str(listing["metadata"]["resourceVersion"])
                items = listing.get("items") or []
                present = {str((i.get("metadata") or {}).get("uid")) for i in items}
                for item in items:
                    on_event("ADDED", item)
                on_event("RELISTED", {"present": sorted(present)})


async def _follow_requests(cluster: ClusterProcess, since: int, demo: Demo) -> None:
    while True:
        with contextlib.suppress(ClusterProcessError, aiohttp.ClientError, TimeoutError):
            for entry in await cluster.control.requests(since):
                since = max(since, int(entry["seq"]))
                demo.on_request(entry)
        await asyncio.sleep(0.2)


async def _follow_agent(stream: asyncio.StreamReader, demo: Demo) -> None:
    while raw := await stream.readline():
        demo.on_agent_line(raw)


# --- the demo ----------------------------------------------------------------------------------


async def _http_json(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> Any:
    async with session.request(method, url, json=body, timeout=CALL_TIMEOUT) as resp:
        data = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url}: {resp.status} {data}")
        return data


async def run_demo(
    settings: Settings, *, out: TextIO, speedup: float = 1.0, notice: float = 30.0
) -> int:
    if speedup <= 0 or notice < 0:
        out.write("demo: --speedup must be positive and --notice not negative\n")
        return 2
    loop = asyncio.get_running_loop()
    # Ctrl-C: asyncio.run cancels this task (the children are stopped on the way out) and the
    # command line turns it into exit code 130. SIGTERM cancels it the same way.
    main = asyncio.current_task()
    terminated = asyncio.Event()

    def on_sigterm() -> None:
        terminated.set()
        if main is not None:
            main.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="spotguard-demo-") as tmp:
            stage = Stage(settings, out, SystemClock(), Path(tmp), speedup=speedup, notice=notice)
            return await stage.play()
    except asyncio.CancelledError:
        if terminated.is_set():
            out.write("demo: stopped (SIGTERM)\n")
            return 128 + signal.SIGTERM
        raise
    except (RuntimeError, ClusterProcessError, KubeError, aiohttp.ClientError, OSError) as exc:
        out.write(f"demo: {exc}\n")
        return 1
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


class Stage:
    """The three children and the demo's connections to them; ``play`` runs the show."""

    def __init__(
        self,
        settings: Settings,
        out: TextIO,
        clock: Clock,
        tmp: Path,
        *,
        speedup: float,
        notice: float,
    ) -> None:
        self.settings = settings
        self.out = out
        self.clock = clock
        self.speedup = speedup
        self.notice = notice
        self.objects = demo_objects(notice, speedup)
        self.cluster = ClusterProcess(
            kubeconfig=tmp / "kubeconfig",
            scenario="empty",
            stderr=tmp / "emulator.log",
            env=_child_env({}),
        )
        self.imds_url = ""
        self.agent_url = ""
        self.procs: list[asyncio.subprocess.Process] = []
        self.early_lines: list[bytes] = []  # the agent's log before the notice

    async def play(self) -> int:
        pods = sum(1 for o in self.objects if o.get("kind") == "Pod")
        self.out.write(
            f"spotguard demo: a Preempt with {self.notice:g}s notice for a spot node with "
            f"{pods} pods, handled by the real agent\n"
        )
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._stop_children)
            session = await stack.enter_async_context(aiohttp.ClientSession(trust_env=False))
            agent = await self._start_children()
            kube = await connect(kubeconfig=str(self.cluster.kubeconfig), timeout=5.0)
            stack.push_async_callback(kube.close)
            assert agent.stderr is not None
            early = asyncio.create_task(self._early_log(agent.stderr))
            try:
                await self._wait_ready(session, agent)
            except RuntimeError as exc:
                await asyncio.sleep(0.2)  # the agent's last words
                _print_tail(self.out, [r.decode("utf-8", "replace") for r in self.early_lines])
                self.out.write(f"demo: {exc}\n")
                return 1
            finally:
                early.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await early
            self.out.write(
                "  the agent is ready (/readyz 200); Azure schedules the Preempt now\n\n"
            )
            return await self._preempt(session, kube, agent)
        raise AssertionError("unreachable")  # pragma: no cover - mypy: the stack may swallow

    async def _start_children(self) -> asyncio.subprocess.Process:
        imds, ready = await start_child(
            "simulate-imds",
            *("--port", "0", "--vm", VM, "--speedup", str(self.speedup), "--log-level", "warning"),
        )
        self.procs.append(imds)
        self.imds_url = ready["vms"][0]["url"]
        await self.cluster.start(timeout=CHILD_START_TIMEOUT)
        await self.cluster.control.seed(*self.objects)
        port = free_port()
        self.agent_url = f"http://127.0.0.1:{port}"
        agent = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "spotguard",
            "run",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=_child_env(
                {
                    # What a DaemonSet pod gets, and no more (plus JSON logs, read below).
                    "SPOTGUARD_NODE_NAME": NODE,
                    "SPOTGUARD_IMDS_URL": self.imds_url,
                    "SPOTGUARD_HTTP_ADDRESS": f"127.0.0.1:{port}",
                    "KUBECONFIG": str(self.cluster.kubeconfig),
                    "SPOTGUARD_CLUSTER_NAME": "demo",
                    "SPOTGUARD_POLL_INTERVAL": format_duration(self.settings.poll_interval),
                    "SPOTGUARD_SAFETY_MARGIN": format_duration(self.settings.safety_margin),
                    "SPOTGUARD_LOG_FORMAT": "json",
                    "SPOTGUARD_LOG_LEVEL": "info",
                }
            ),
        )
        self.procs.append(agent)
        self.out.write(f"  IMDS simulator    {self.imds_url}  (VM {VM}, pid {imds.pid})\n")
        self.out.write(
            f"  emulated cluster  {self.cluster.url}  (node {NODE}, pid {self.cluster.pid})\n"
        )
        self.out.write(f"  agent             {self.agent_url}  (spotguard run, pid {agent.pid})\n")
        self.out.flush()
        return agent

    async def _stop_children(self) -> None:
        # The agent first: it must not see its API server vanish under it.
        for proc in reversed(self.procs):
            await stop_child(proc)
        await self.cluster.stop()

    async def _early_log(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            self.early_lines.append(raw)

    async def _wait_ready(
        self, session: aiohttp.ClientSession, agent: asyncio.subprocess.Process
    ) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + AGENT_READY_TIMEOUT
        while loop.time() < until:
            if agent.returncode is not None:
                raise RuntimeError(f"the agent exited with code {agent.returncode}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(self.agent_url + "/readyz", timeout=CALL_TIMEOUT) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the agent was not ready within {AGENT_READY_TIMEOUT:g}s")

    async def _preempt(
        self, session: aiohttp.ClientSession, kube: KubeClient, agent: asyncio.subprocess.Process
    ) -> int:
        loop = asyncio.get_running_loop()
        pods_query = {"fieldSelector": f"spec.nodeName={NODE}"}
        node_query = {"fieldSelector": f"metadata.name={NODE}"}
        pods = await kube.request("GET", PODS_PATH, query=pods_query)
        nodes = await kube.request("GET", NODES_PATH, query=node_query)
        mark = await self.cluster.control.mark()
        t0_wall, t0_loop = self.clock.now(), loop.time()
        event = await _http_json(
            session,
            "POST",
            self.imds_url + "/control/events",
            {"type": "Preempt", "not_before_in": self.notice},
        )
        demo = Demo(out=self.out, t0_wall=t0_wall, t0_loop=t0_loop)
        for raw in self.early_lines:
            demo.on_agent_line(raw)
        demo.adopt(pods.get("items") or [])
        not_before = datetime.fromisoformat(event["not_before_rfc3339"].replace("Z", "+00:00"))
        not_before_t = (not_before - t0_wall).total_seconds()
        deadline_t = not_before_t - self.settings.safety_margin
        demo.timeline.add(
            0.0,
            f"Azure schedules Preempt {event['event_id'][:8]} for {VM}: NotBefore at "
            f"t+{not_before_t:.1f}s, so the agent's deadline is t+{deadline_t:.1f}s",
        )
        assert agent.stderr is not None
        tasks = [
            asyncio.create_task(
                _follow(kube, PODS_PATH, pods_query, _version(pods), demo.on_pod_event)
            ),
            asyncio.create_task(
                _follow(kube, NODES_PATH, node_query, _version(nodes), demo.on_node_event)
            ),
            asyncio.create_task(_follow_requests(self.cluster, mark, demo)),
            asyncio.create_task(_follow_agent(agent.stderr, demo)),
        ]
        try:
            await self._until_empty(demo, agent, not_before_t + GIVE_UP_AFTER_NOT_BEFORE)
            await asyncio.sleep(HOLD)  # the last lines from the slower sources
            demo.timeline.flush(everything=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return _summary(self.out, demo.seen, deadline_t=deadline_t, not_before_t=not_before_t)

    async def _until_empty(
        self, demo: Demo, agent: asyncio.subprocess.Process, give_up: float
    ) -> None:
        """Until every pod that must move is gone, or NotBefore is past (the VM is gone).

        The demo ends there: what Azure does at NotBefore (start the event, take the VM) is
        the simulator's business and would only add waiting to the show."""
        while demo.seen.empty_t() is None and demo.t_loop() < give_up:
            if agent.returncode is not None:
                demo.timeline.add(demo.t_loop(), f"the agent exited with {agent.returncode}")
                return
            demo.timeline.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(demo.changed.wait(), TICK)
            demo.changed.clear()


PODS_PATH = "/api/v1/pods"
NODES_PATH = "/api/v1/nodes"


def _version(listing: JSON) -> str:
    return str((listing.get("metadata") or {}).get("resourceVersion") or "")


#: Context every agent line carries; left out when a line is shown to people.
_CONTEXT = frozenset({"command", "node", "vm_name", "event_id", "kind", "timestamp", "level"})


def _brief(line: Mapping[str, Any]) -> str:
    """``warning pod_delete_after_pdb pod=ml-0/web-0-1 reason=...`` from a JSON log line."""
    fields = " ".join(
        f"{k}={v}" for k, v in line.items() if k not in _CONTEXT and k != "event" and v is not None
    )
    return f"{line.get('level', '')} {line.get('event', '')} {fields}"[:300]


def _print_tail(out: TextIO, lines: list[str]) -> None:
    out.write("the agent's last log lines:\n")
    for raw in lines[-AGENT_LOG_TAIL:]:
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            line = None
        text = _brief(line) if isinstance(line, dict) else raw.rstrip()[:300]
        out.write(f"  | {text}\n")


def _worth_showing(line: str) -> bool:
    """A warning or an error, or not a JSON line at all (a traceback)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return True
    return not isinstance(data, dict) or data.get("level") in WARNING_LEVELS


def _summary(out: TextIO, seen: Observed, *, deadline_t: float, not_before_t: float) -> int:
    moving = seen.moving()
    gone = [p for p in moving if p.gone_t is not None]
    arrived = sum(1 for p in seen.pods.values() if p.arrived)
    deleted = sum(1 for p in gone if p.key in seen.deleted)
    evicted = sum(1 for p in gone if p.key in seen.evicted and p.key not in seen.deleted)
    empty_t = seen.empty_t()
    in_time = empty_t is not None and empty_t <= deadline_t

    def at(t: float | None) -> str:
        return "-" if t is None else f"{t:.1f} s"

    rows: list[tuple[str, str]] = [
        ("pods on the node at the notice", str(len(seen.pods) - arrived)),
        ("  evicted", str(evicted)),
        ("  deleted after PDB refusals", str(deleted)),
        ("  gone otherwise", str(len(gone) - evicted - deleted)),
        ("  left in place (DaemonSet pods)", str(len(seen.pods) - len(moving))),
        ("  still on the node", str(len(moving) - len(gone))),
        ("pods scheduled onto the node during the drain", str(arrived)),
        ("PDB refusals, retried", str(sum(seen.pdb_refusals.values()))),
        ("notice to seen by the agent", at(seen.seen_t)),
        ("notice to node cordoned", at(seen.cordoned_t)),
        ("notice to every pod asked to leave", at(seen.all_asked_t())),
        ("notice to node empty", at(empty_t)),
        ("deadline (NotBefore - safety margin)", at(deadline_t)),
        ("NotBefore", at(not_before_t)),
        ("margin (deadline - node empty)", "-" if empty_t is None else at(deadline_t - empty_t)),
    ]
    if seen.agent_margin is not None:
        rows.append(("margin, as the agent measured it", at(seen.agent_margin)))
    rows.append(("agent warnings and errors logged", str(seen.agent_warnings)))
    width = max(len(label) for label, _ in rows) + 2
    out.write("\nsummary\n")
    for label, value in rows:
        out.write(f"  {label:<{width}}{value:>8}\n")
    if in_time:
        out.write("\nresult: drained in time\n")
    else:
        _print_tail(out, [line for line in seen.agent_lines if _worth_showing(line)])
        out.write("\nresult: NOT drained in time\n")
    out.flush()
    return 0 if in_time else 1
