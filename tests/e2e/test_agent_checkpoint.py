"""A Preempt reaches the running pipeline steps' checkpoint endpoints before anything evicts them.

Real parts only: the agent (``spotguard run``), the IMDS simulator, the emulated API server and,
as the node's pipeline steps, the example step (``examples/concat_csv_step.py``) as child
processes serving their real checkpoint endpoints on 127.0.0.1 (their pods' IP here). The test
stands in for the kubelet of those pods: a step process that exits marks its pod Failed with
its exit code, and a pod being deleted sends SIGTERM to its process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from spotguard.sim.child_process import child_env, free_port
from spotguard.sim.cluster_scenarios import owner_ref, pod_object
from spotguard.step import CheckpointStore, open_store
from tests.e2e.agent_harness import (
    Harness,
    agent_harness,
    node_name,
    not_before,
    reason_counts,
    wait_node_drained,
)
from tests.step.conftest import make_csvs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "concat_csv_step.py"
NAMESPACE = "pipelines"
TOKEN = "e2e-checkpoint-token"
YIELD = 75
NOTICE = 20.0
FILES = 40
PACE = 0.25  # seconds per file: 10 s of work, so the notice lands mid-way


@dataclass
class StepProcess:
    """One pipeline step: its pod (seeded) and its process (started by the test)."""

    name: str
    port: int
    location: Path
    inputs: Path
    output: Path
    proc: asyncio.subprocess.Process | None = None
    stdout: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""
    sigterm_at: float | None = None

    def pod(self, node: str) -> dict[str, Any]:
        return pod_object(
            NAMESPACE,
            self.name,
            node,
            "127.0.0.1",
            labels={"workflows.argoproj.io/workflow": "concat-x7k2p"},
            owner=owner_ref("Workflow", "concat-x7k2p", "argoproj.io/v1alpha1"),
            grace=30,
            annotations={
                "spotguard.io/checkpoint": "http",
                "spotguard.io/checkpoint-port": str(self.port),
            },
        )

    async def start(self) -> None:
        env = {
            **child_env(),
            "SPOTGUARD_CHECKPOINT_URL": self.location.as_uri(),
            "SPOTGUARD_CHECKPOINT_TOKEN": TOKEN,
            "SPOTGUARD_CHECKPOINT_HOST": "127.0.0.1",
            "SPOTGUARD_CHECKPOINT_PORT": str(self.port),
            "SPOTGUARD_RUN_ID": "concat-x7k2p",
            "SPOTGUARD_STEP": self.name,
            "KFP_RETRY_INDEX": "0",
        }
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE),
            "--input",
            str(self.inputs),
            "--output",
            str(self.output),
            "--pace",
            str(PACE),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def run(self, kubelet: Kubelet) -> int:
        """Until the process exits; then its pod is marked Failed (or Succeeded) as a kubelet
        would. Returns the exit code."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        err = asyncio.create_task(self.proc.stderr.read())
        async for line in self.proc.stdout:
            self.stdout.append(json.loads(line))
        code = await self.proc.wait()
        self.stderr = (await err).decode()
        await kubelet.exited(self.name, code)
        return code

    def units(self) -> int:
        return sum(1 for e in self.stdout if e["event"] == "unit")


class Kubelet:
    """The two kubelet duties the emulator cannot do for a real process."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._http = aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(5))

    async def close(self) -> None:
        await self._http.close()

    async def exited(self, name: str, code: int) -> None:
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {"name": "main", "state": {"terminated": {"exitCode": code}}, "ready": False}
            ],
        }
        url = f"{self._url}/api/v1/namespaces/{NAMESPACE}/pods/{name}/status"
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self._http.patch(
            url, data=json.dumps({"status": status}), headers=headers
        ) as resp:
            # 404: the pod was deleted (evicted) before its process ended.
            assert resp.status in (200, 404), await resp.text()

    async def evict(self, name: str) -> int:
        """What AKS node auto-drain does: the Eviction API."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": NAMESPACE},
        }
        url = f"{self._url}/api/v1/namespaces/{NAMESPACE}/pods/{name}/eviction"
        async with self._http.post(url, json=body) as resp:
            return resp.status


def secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "spotguard-checkpoint", "namespace": NAMESPACE},
        "data": {"token": base64.b64encode(TOKEN.encode()).decode()},
    }


@asynccontextmanager
async def steps_on_node(
    tmp_path: Path, names: list[str]
) -> AsyncIterator[tuple[list[StepProcess], dict[str, Any]]]:
    inputs = tmp_path / "inputs"
    make_csvs(inputs, FILES, seed=7, rows=20)
    steps = [
        StepProcess(
            name=name,
            port=free_port(),
            location=tmp_path / "ckpt" / name,
            inputs=inputs,
            output=tmp_path / "out" / f"{name}.csv",
        )
        for name in names
    ]
    try:
        yield steps, {"seed": [secret(), *(s.pod(node_name(0)) for s in steps)]}
    finally:
        for step in steps:
            if step.proc is not None and step.proc.returncode is None:
                step.proc.kill()
                await step.proc.wait()


async def sigterm_when_deleted(h: Harness, step: StepProcess) -> None:
    """A pod being deleted gets SIGTERM, as the kubelet sends it."""
    while True:
        await h.cluster.changed.wait()
        h.cluster.changed.clear()
        life = next((p for p in h.cluster.pods.values() if p.name == step.name), None)
        if life is not None and life.terminating_at is not None and step.proc is not None:
            if step.proc.returncode is None:
                step.sigterm_at = time.time()
                step.proc.send_signal(signal.SIGTERM)
            return


async def start_steps(h: Harness, steps: list[StepProcess], kubelet: Kubelet) -> list[Any]:
    for step in steps:
        await step.start()
    tasks = [
        *(asyncio.create_task(s.run(kubelet)) for s in steps),
        *(asyncio.create_task(sigterm_when_deleted(h, s)) for s in steps),
    ]
    # Each has its endpoint up and a few units done before the notice.
    await h.wait_for(
        lambda: all(s.units() >= 2 for s in steps) or None,
        timeout=15,
        what="every step to be working",
    )
    return tasks


async def test_preempt_asks_steps_to_checkpoint_and_they_exit_by_themselves(
    tmp_path: Path,
) -> None:
    node = node_name(0)
    async with (
        steps_on_node(tmp_path, ["concat-a", "concat-b"]) as (steps, seed),
        agent_harness(tmp_path, seed=seed["seed"], emulator={"stop_after": 1.0}) as h,
    ):
        kubelet = Kubelet(h.cluster.url)
        try:
            tasks = await start_steps(h, steps, kubelet)
            injected_at = time.time()
            event = await h.imds.inject("Preempt", not_before_in=NOTICE)
            event_id = event["event_id"]
            # The steps' pods stay, Failed, as Argo keeps them; every other pod must go.
            names = {s.name for s in steps}
            pods = [p for p in h.cluster.pods_of(node, before=injected_at) if p.name not in names]
            await wait_node_drained(h, node, event_id, pods, timeout=NOTICE)
            codes = await asyncio.wait_for(asyncio.gather(*tasks[: len(steps)]), 10)
            for task in tasks[len(steps) :]:
                task.cancel()
        finally:
            await kubelet.close()
        agent = h.agent(0)

        # Each step saved and exited with the yield code by itself: none was evicted or signalled.
        assert codes == [YIELD, YIELD], [s.stderr[-2000:] for s in steps]
        assert all(s.sigterm_at is None for s in steps)
        requests = await h.cluster.agent_requests()
        evicted = {r["name"] for r in requests if r["subresource"] == "eviction"}
        assert not evicted & {s.name for s in steps}, evicted
        for step in steps:
            assert f"checkpoint requested: event {event_id} (preempt)" in step.stderr
            store = CheckpointStore(open_store(step.location.as_uri()), run_id="x", step="y")
            latest = store.restore()
            assert latest is not None
            assert latest.meta["event_id"] == event_id
            assert latest.progress == step.units(), "the checkpoint holds every unit done"
            assert step.units() < FILES

        answered = {
            line["pod"]: line
            for line in agent.events("checkpoint_answered")
            if line["pod"].startswith(f"{NAMESPACE}/")
        }
        assert set(answered) == {f"{NAMESPACE}/{s.name}" for s in steps}
        for line in answered.values():
            assert (line["result"], line["status"]) == ("saved", 200), line
        # The requests went out at once after the notice, beside the cordon.
        (noticed,) = agent.events("notice_new")
        sent = [parse_ts(line["timestamp"]) - line["seconds"] for line in answered.values()]
        assert max(sent) - parse_ts(noticed["timestamp"]) < 1.0

        for step in steps:
            pod = next(
                p for p in await h.cluster.pods_on(node) if p["metadata"]["name"] == step.name
            )
            result = json.loads(pod["metadata"]["annotations"]["spotguard.io/checkpoint-result"])
            assert (result["event_id"], result["result"]) == (event_id, "saved")
        events = await h.cluster.spotguard_events(node, event_id)
        assert reason_counts(events)["SpotguardCheckpointRequested"] == 1
        assert (
            await agent.metric("spotguard_actions_total", action="checkpoint", outcome="success")
            == 2.0
        )
        assert not_before(event) > time.time()  # all of it inside the notice
        assert agent.errors() == [], agent.errors()


async def test_a_step_another_actor_evicts_still_saves_and_the_drain_goes_on(
    tmp_path: Path,
) -> None:
    """AKS node auto-drain evicts the same pods: the evicted step saves on SIGTERM instead."""
    node = node_name(0)
    async with (
        steps_on_node(tmp_path, ["concat-a", "concat-b"]) as (steps, seed),
        agent_harness(tmp_path, seed=seed["seed"], emulator={"stop_after": 2.0}) as h,
    ):
        kubelet = Kubelet(h.cluster.url)
        try:
            tasks = await start_steps(h, steps, kubelet)
            injected_at = time.time()
            event = await h.imds.inject("Preempt", not_before_in=NOTICE)
            assert await kubelet.evict("concat-b") == 201
            # The steps' pods stay, Failed, as Argo keeps them; every other pod must go.
            names = {s.name for s in steps}
            pods = [p for p in h.cluster.pods_of(node, before=injected_at) if p.name not in names]
            await wait_node_drained(h, node, event["event_id"], pods, timeout=NOTICE)
            codes = await asyncio.wait_for(asyncio.gather(*tasks[: len(steps)]), 10)
            for task in tasks[len(steps) :]:
                task.cancel()
        finally:
            await kubelet.close()

        assert codes == [YIELD, YIELD], [s.stderr[-2000:] for s in steps]
        evicted_step = steps[1]
        assert evicted_step.sigterm_at is not None
        store = CheckpointStore(open_store(evicted_step.location.as_uri()), run_id="x", step="y")
        latest = store.restore()
        assert latest is not None
        assert latest.progress == evicted_step.units()
        answered = {
            line["pod"]: line["result"] for line in h.agent(0).events("checkpoint_answered")
        }
        assert answered[f"{NAMESPACE}/concat-a"] == "saved"
        # Gone (Failed) before the agent's list, or asked while it saved for SIGTERM: the step
        # says so (409), reports that same save, or has already closed its endpoint.
        assert answered.get(f"{NAMESPACE}/concat-b") in {None, "saved", "exiting", "unreachable"}
        assert h.agent(0).errors() == [], h.agent(0).errors()


def parse_ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
