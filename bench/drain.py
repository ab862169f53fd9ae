"""How fast spotguard cordons and drains a full spot node: a table, not a test.

For nodes with 30, 110 and 250 pods (the mix of ``spotguard.sim.cluster_workloads``: DaemonSet
pods, a PDB-limited Deployment, emptyDir and unmanaged pods, pipeline steps, grace periods from
0 to 60 s, every pod taking 1 s to stop), each run starts the clock at the notice (t0), then does
what the agent does: cordon, taint and record the notice in one node write, then drain against a
30 s Preempt deadline (NotBefore - 2 s safety margin). It reports, per size, the median and p99
over the runs of:

- notice → cordoned, notice → every pod asked to leave, notice → node empty;
- notice → every checkpoint request sent, and received by its step: ``--steps`` (default 20)
  more pipeline-step pods, each with a real ``spotguard.step`` endpoint on 127.0.0.1 that saves
  for 200 ms, answers, and exits (the bench marks its pod Failed, as the kubelet would);
- deadline margin (deadline - node empty);
- API requests sent, and the peak requests in any one second (from the emulator's request log);
- the emulator's own time per request, beside, so the reader sees which part is ours.

The emulated API server runs in its own process (``spotguard simulate-cluster``). Usage::

    .venv/bin/python bench/drain.py [--sizes 30 110 250] [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from spotguard.checkpoint.protocol import CheckpointRequester, RoundRequest
from spotguard.clock import SystemClock
from spotguard.kube.client import KubeClient, connect
from spotguard.kube.drain import DrainOptions, drain_node
from spotguard.kube.nodes import NodeActions
from spotguard.observability.logging import configure_logging
from spotguard.sim.cluster_process import ClusterProcess
from spotguard.sim.cluster_scenarios import owner_ref, pod_object
from spotguard.sim.cluster_workloads import loaded_node, spare_node, spot_node_name
from spotguard.step.endpoint import CheckpointEndpoint, CheckpointRequest, Respond

NOTICE_S = 30.0
SAFETY_MARGIN_S = 2.0
STOP_BUDGET_S = 3.0
SAVE_S = 0.2
TOKEN = "bench-token"  # noqa: S105 (the steps of this bench only)


@dataclass(frozen=True)
class Run:
    cordon_ms: float
    asked_ms: float
    empty_ms: float | None
    margin_s: float | None
    requests: int
    peak_rps: int
    emulator_ms_mean: float
    emulator_ms_p99: float
    result: str
    left: int
    pods: int
    #: notice → every checkpoint request handed to its connection / seen by its step
    ckpt_sent_ms: float | None = None
    ckpt_received_ms: float | None = None
    saved: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def peak_per_second(times: list[float]) -> int:
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


class Steps:
    """Real step endpoints that save for ``SAVE_S``, answer 200, then exit (pod → Failed)."""

    def __init__(self, kube: KubeClient, namespace: str, count: int) -> None:
        self._kube = kube
        self._loop = asyncio.get_running_loop()
        self.namespace = namespace
        self.received: list[float] = []
        self._lock = threading.Lock()
        self.endpoints = {
            f"step-{i:03d}": CheckpointEndpoint(
                host="127.0.0.1",
                port=0,
                path="/checkpoint",
                token=TOKEN,
                on_request=self._handler(f"step-{i:03d}"),
            )
            for i in range(count)
        }

    def _handler(self, name: str) -> Any:
        def on_request(request: CheckpointRequest, respond: Respond) -> None:
            with self._lock:
                self.received.append(time.monotonic())
            time.sleep(SAVE_S)
            respond(200, {"location": f"file:///bench/{name}", "bytes": 1})
            asyncio.run_coroutine_threadsafe(self._exited(name), self._loop)

        return on_request

    async def _exited(self, name: str) -> None:
        await self._kube.request(
            "PATCH",
            f"/api/v1/namespaces/{self.namespace}/pods/{name}/status",
            body={"status": {"phase": "Failed"}},
            content_type="application/merge-patch+json",
        )

    def objects(self, node: str) -> list[dict[str, Any]]:
        token = base64.b64encode(TOKEN.encode()).decode()
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "spotguard-checkpoint", "namespace": self.namespace},
            "data": {"token": token},
        }
        pods = [
            pod_object(
                self.namespace,
                name,
                node,
                "127.0.0.1",
                labels={"workflows.argoproj.io/workflow": "bench"},
                owner=owner_ref("Workflow", "bench", "argoproj.io/v1alpha1"),
                grace=60,
                annotations={
                    "spotguard.io/checkpoint": "http",
                    "spotguard.io/checkpoint-port": str(endpoint.port),
                },
            )
            for name, endpoint in self.endpoints.items()
        ]
        return [secret, *pods]


@contextmanager
def serving(steps: Steps) -> Iterator[Steps]:
    for endpoint in steps.endpoints.values():
        endpoint.start()
    try:
        yield steps
    finally:
        for endpoint in steps.endpoints.values():
            endpoint.stop()


async def one_run(cluster: ClusterProcess, index: int, pods: int, steps: int) -> Run:
    node = spot_node_name(index)
    kube = await connect(kubeconfig=str(cluster.kubeconfig), timeout=2.0)
    log = structlog.get_logger().bind(node=node)
    http = aiohttp.ClientSession(
        trust_env=False, connector=aiohttp.TCPConnector(limit=0, force_close=True)
    )
    try:
        with serving(Steps(kube, f"steps-{index}", steps)) as step_pods:
            await cluster.control.seed(*loaded_node(index, pods), *step_pods.objects(node))
            # Warm the connection as a running agent would have (it polls the API server).
            await kube.request("GET", f"/api/v1/nodes/{node}")
            mark = await cluster.control.mark()
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            t0_wall = datetime.now(UTC)
            deadline = t0 + NOTICE_S - SAFETY_MARGIN_S
            requester = CheckpointRequester(
                kube=kube,
                http=http,
                clock=SystemClock(),
                dry_run=False,
                api_timeout=2.0,
                log=log,
            )
            request = RoundRequest(
                event_id=f"bench-{index}",
                kind="preempt",
                node=node,
                deadline=deadline - STOP_BUDGET_S,
                deadline_wall=t0_wall
                + timedelta(seconds=NOTICE_S - SAFETY_MARGIN_S - STOP_BUDGET_S),
            )
            # As the responder does: checkpoint requests beside the cordon, then the drain.
            starting = asyncio.create_task(requester.start(request, log))
            actions = NodeActions(kube=kube, node=node, dry_run=False, log=log)
            await actions.begin(event_id=f"bench-{index}", kind="preempt", deadline="n/a")
            cordoned = loop.time()
            round_ = await starting
            with contextlib.suppress(TimeoutError):  # as the responder: requests first
                await asyncio.wait_for(round_.all_sent.wait(), 0.5)
            outcome = await drain_node(
                kube,
                node,
                deadline=deadline,
                log=log,
                options=DrainOptions(stop_budget=STOP_BUDGET_S),
                holds=round_.holds,
                listing=round_.listing,
            )
            results = await round_.wait()
            records = await cluster.control.requests(since=mark)
    finally:
        await http.close()
        await kube.close()
    ours = [r for r in records if r.get("fault") is None]
    durations = [float(r["duration_ms"]) for r in ours]
    left = sum(
        1 for p in outcome.pods if p.outcome.value in {"evicted", "deleted_after_pdb", "gone"}
    )
    sent = [r.sent_at for r in results if r.sent_at is not None]
    return Run(
        cordon_ms=(cordoned - t0) * 1000,
        asked_ms=((outcome.all_asked_at or outcome.finished_at) - t0) * 1000,
        empty_ms=None if outcome.empty_at is None else (outcome.empty_at - t0) * 1000,
        margin_s=None if outcome.empty_at is None else deadline - outcome.empty_at,
        requests=len(ours),
        peak_rps=peak_per_second([float(r["t"]) for r in ours]),
        emulator_ms_mean=statistics.fmean(durations) if durations else 0.0,
        emulator_ms_p99=percentile(durations, 0.99) if durations else 0.0,
        result=outcome.result.value,
        left=left,
        pods=pods + steps,
        ckpt_sent_ms=(max(sent) - t0) * 1000 if len(sent) == steps and steps else None,
        ckpt_received_ms=(max(step_pods.received) - t0) * 1000
        if len(step_pods.received) == steps and steps
        else None,
        saved=sum(1 for r in results if r.outcome.value == "saved"),
    )


def row(size: int, runs: list[Run]) -> list[str]:
    def both(values: list[float], fmt: str) -> str:
        return f"{format(statistics.median(values), fmt)} / {format(percentile(values, 0.99), fmt)}"

    empties = [r.empty_ms for r in runs if r.empty_ms is not None]
    margins = [r.margin_s for r in runs if r.margin_s is not None]
    sent = [r.ckpt_sent_ms for r in runs if r.ckpt_sent_ms is not None]
    received = [r.ckpt_received_ms for r in runs if r.ckpt_received_ms is not None]
    return [
        str(size),
        str(len(runs)),
        both([r.cordon_ms for r in runs], ".1f"),
        both(sent, ".1f") if len(sent) == len(runs) else "missing",
        both(received, ".1f") if len(received) == len(runs) else "missing",
        f"{min(r.saved for r in runs)}",
        both([r.asked_ms for r in runs], ".1f"),
        both(empties, ".0f") if empties else "never",
        f"{min(margins):.1f}" if margins else "-",
        both([float(r.requests) for r in runs], ".0f"),
        both([float(r.peak_rps) for r in runs], ".0f"),
        f"{statistics.fmean(r.emulator_ms_mean for r in runs):.2f} / "
        f"{max(r.emulator_ms_p99 for r in runs):.2f}",
        ",".join(sorted({r.result for r in runs})),
    ]


HEADERS = [
    "pods",
    "runs",
    "cordon ms (med / p99)",
    "ckpt sent ms",
    "ckpt received ms",
    "min saved",
    "all asked ms",
    "empty ms",
    "min margin s",
    "API requests",
    "peak req/s",
    "emulator ms/req (mean / p99)",
    "result",
]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    print(" | ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


async def main(sizes: list[int], runs: int, steps: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            async with ClusterProcess(
                kubeconfig=Path(tmp) / f"kubeconfig-{size}", stderr=Path(tmp) / "emulator.log"
            ) as cluster:
                await cluster.control.seed(spare_node(999))
                results = []
                for i in range(runs):
                    results.append(await one_run(cluster, i + 1, size, steps))
                    print(f"  {size} pods, run {i + 1}/{runs}: {results[-1]}", file=sys.stderr)
                rows.append(row(size, results))
    print()
    print(
        f"spotguard drain, {NOTICE_S:g} s Preempt notice (deadline = NotBefore - "
        f"{SAFETY_MARGIN_S:g} s), every pod takes 1 s to stop; t0 = the notice;\n"
        f"pods = the size plus {steps} checkpointing steps (each saves {SAVE_S * 1000:.0f} ms)"
    )
    print_table(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 110, 250])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="checkpointing steps per node")
    args = parser.parse_args()
    configure_logging(fmt="console", level="warning")
    asyncio.run(main(args.sizes, args.runs, args.steps))
