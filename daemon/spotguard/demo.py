"""``spotguard demo``: the real agent drains a loaded spot node inside a Preempt notice.

Three child processes, all on 127.0.0.1: the IMDS simulator (one VM), the emulated Kubernetes
API server (a spot node with ~20 pods of the mix a real drain meets, and a spare node that takes
the replacements; ``demo_node``) and ``spotguard run`` itself, configured as a DaemonSet pod would
be. The demo then plays Azure: it schedules a Preempt for the VM and prints, as it happens, what
the agent does to the node. It follows the cluster (watches of the node and its pods, and the
emulator's request log, which serves as an audit log) for what happened, and the agent's JSON log
for what the agent meant (notice seen, its own margin) (``demo_follow``), and turns both into a
timeline (``demo_timeline``). A summary table follows (``demo_summary``); the exit code is 0 when
every pod that had to move was gone before the deadline (``NotBefore`` minus the safety margin),
else 1.

Every child is stopped on the way out, on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path
from typing import TextIO

import aiohttp

from spotguard.clock import Clock, SystemClock
from spotguard.config import Settings, format_duration
from spotguard.demo_agent_log import print_tail
from spotguard.demo_follow import (
    NODES_PATH,
    PODS_PATH,
    follow_lines,
    follow_requests,
    follow_watch,
    resource_version,
)
from spotguard.demo_node import NODE, VM, demo_objects
from spotguard.demo_summary import print_summary
from spotguard.demo_timeline import HOLD, Recorder
from spotguard.kube.client import KubeClient, KubeError, connect
from spotguard.sim.child_process import child_env, free_port, spawn, stop_process, wait_ready
from spotguard.sim.cluster_process import ClusterProcess
from spotguard.sim.imds_process import ImdsProcess

CHILD_START_TIMEOUT = 30.0
AGENT_READY_TIMEOUT = 30.0
#: After NotBefore the VM is gone; a node not empty by then is not going to be.
GIVE_UP_AFTER_NOT_BEFORE = 1.0
TICK = 0.1


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
    # RuntimeError covers ClusterProcessError and ImdsProcessError.
    except (RuntimeError, KubeError, aiohttp.ClientError, OSError) as exc:
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
        self.notice = notice
        self.objects = demo_objects(notice, speedup)
        self.imds = ImdsProcess(
            [VM], speedup=speedup, log_level="warning", env=child_env(), stderr=tmp / "imds.log"
        )
        self.cluster = ClusterProcess(
            kubeconfig=tmp / "kubeconfig",
            scenario="empty",
            stderr=tmp / "emulator.log",
            env=child_env(),
        )
        self.agent: asyncio.subprocess.Process | None = None
        self.agent_url = ""
        self.early_lines: list[bytes] = []  # the agent's log before the notice

    async def play(self) -> int:
        pods = sum(1 for o in self.objects if o.get("kind") == "Pod")
        self.out.write(
            f"spotguard demo: a Preempt with {self.notice:g}s notice for a spot node with "
            f"{pods} pods, handled by the real agent\n"
        )
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._stop_children)
            agent = await self._start_children()
            kube = await connect(kubeconfig=str(self.cluster.kubeconfig), timeout=5.0)
            stack.push_async_callback(kube.close)
            assert agent.stderr is not None
            early = asyncio.create_task(follow_lines(agent.stderr, self.early_lines.append))
            try:
                await wait_ready(agent, self.agent_url, AGENT_READY_TIMEOUT)
            except RuntimeError as exc:
                await asyncio.sleep(0.2)  # the agent's last words
                print_tail(self.out, [r.decode("utf-8", "replace") for r in self.early_lines])
                self.out.write(f"demo: {exc}\n")
                return 1
            finally:
                early.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await early
            self.out.write(
                "  the agent is ready (/readyz 200); Azure schedules the Preempt now\n\n"
            )
            return await self._preempt(kube, agent)
        raise AssertionError("unreachable")  # pragma: no cover - mypy: the stack may swallow

    async def _start_children(self) -> asyncio.subprocess.Process:
        await self.imds.start(timeout=CHILD_START_TIMEOUT)
        await self.cluster.start(timeout=CHILD_START_TIMEOUT)
        await self.cluster.control.seed(*self.objects)
        port = free_port()
        self.agent_url = f"http://127.0.0.1:{port}"
        # What a DaemonSet pod gets, and no more (plus JSON logs, read from its stderr).
        env = {
            "SPOTGUARD_NODE_NAME": NODE,
            "SPOTGUARD_IMDS_URL": self.imds.url,
            "SPOTGUARD_HTTP_ADDRESS": f"127.0.0.1:{port}",
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "SPOTGUARD_CLUSTER_NAME": "demo",
            "SPOTGUARD_POLL_INTERVAL": format_duration(self.settings.poll_interval),
            "SPOTGUARD_SAFETY_MARGIN": format_duration(self.settings.safety_margin),
            "SPOTGUARD_LOG_FORMAT": "json",
            "SPOTGUARD_LOG_LEVEL": "info",
        }
        self.agent = agent = await spawn(
            "run",
            env=child_env(env),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self.out.write(f"  IMDS simulator    {self.imds.url}  (VM {VM}, pid {self.imds.pid})\n")
        self.out.write(
            f"  emulated cluster  {self.cluster.url}  (node {NODE}, pid {self.cluster.pid})\n"
        )
        self.out.write(f"  agent             {self.agent_url}  (spotguard run, pid {agent.pid})\n")
        self.out.flush()
        return agent

    async def _stop_children(self) -> None:
        # The agent first: it must not see its API server vanish under it.
        if self.agent is not None:
            await stop_process(self.agent)
        await self.imds.stop()
        await self.cluster.stop()

    async def _preempt(self, kube: KubeClient, agent: asyncio.subprocess.Process) -> int:
        loop = asyncio.get_running_loop()
        pods_query = {"fieldSelector": f"spec.nodeName={NODE}"}
        node_query = {"fieldSelector": f"metadata.name={NODE}"}
        pods = await kube.request("GET", PODS_PATH, query=pods_query)
        nodes = await kube.request("GET", NODES_PATH, query=node_query)
        mark = await self.cluster.control.mark()
        t0_wall, t0_loop = self.clock.now(), loop.time()
        event = await self.imds.control.inject("Preempt", not_before_in=self.notice)
        recorder = Recorder(out=self.out, t0_wall=t0_wall, t0_loop=t0_loop)
        for raw in self.early_lines:
            recorder.on_agent_line(raw)
        recorder.adopt(pods.get("items") or [])
        not_before_t = recorder.t_wall(str(event["not_before_rfc3339"]))
        deadline_t = not_before_t - self.settings.safety_margin
        recorder.timeline.add(
            0.0,
            f"Azure schedules Preempt {event['event_id'][:8]} for {VM}: NotBefore at "
            f"t+{not_before_t:.1f}s, so the agent's deadline is t+{deadline_t:.1f}s",
        )
        assert agent.stderr is not None
        followers = [
            follow_watch(
                kube, PODS_PATH, pods_query, resource_version(pods), recorder.on_pod_event
            ),
            follow_watch(
                kube, NODES_PATH, node_query, resource_version(nodes), recorder.on_node_event
            ),
            follow_requests(self.cluster.control, mark, recorder.on_request),
            follow_lines(agent.stderr, recorder.on_agent_line),
        ]
        tasks = [asyncio.create_task(f) for f in followers]
        try:
            await self._until_empty(recorder, agent, not_before_t + GIVE_UP_AFTER_NOT_BEFORE)
            await asyncio.sleep(HOLD)  # the last lines from the slower sources
            recorder.timeline.flush(everything=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return print_summary(
            self.out, recorder.seen, deadline_t=deadline_t, not_before_t=not_before_t
        )

    async def _until_empty(
        self, recorder: Recorder, agent: asyncio.subprocess.Process, give_up: float
    ) -> None:
        """Until every pod that must move is gone, or NotBefore is past (the VM is gone).

        The demo ends there: what Azure does at NotBefore (start the event, take the VM) is
        the simulator's business and would only add waiting to the show."""
        while recorder.seen.empty_t() is None and recorder.t_loop() < give_up:
            if agent.returncode is not None:
                recorder.timeline.add(
                    recorder.t_loop(), f"the agent exited with {agent.returncode}"
                )
                return
            recorder.timeline.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recorder.changed.wait(), TICK)
            recorder.changed.clear()
