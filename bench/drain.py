"""How fast spotguard cordons and drains a full spot node: a table, not a test.

For nodes with 30, 110 and 250 pods (the mix of ``spotguard.sim.cluster_workloads``: DaemonSet
pods, a PDB-limited Deployment, emptyDir and unmanaged pods, pipeline steps, grace periods from
0 to 60 s, every pod taking 1 s to stop), each run starts the clock at the notice (t0), then does
what the agent does: cordon, taint and record the notice in one node write, then drain against a
30 s Preempt deadline (NotBefore - 2 s safety margin). It reports, per size, the median and p99
over the runs of:

- notice → cordoned, notice → every pod asked to leave, notice → node empty;
- deadline margin (deadline - node empty);
- API requests sent, and the peak requests in any one second (from the emulator's request log);
- the emulator's own time per request, beside, so the reader sees which part is ours.

The emulated API server runs in its own process (``spotguard simulate-cluster``). Usage::

    .venv/bin/python bench/drain.py [--sizes 30 110 250] [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from spotguard.kube.client import connect
from spotguard.kube.drain import DrainOptions, drain_node
from spotguard.kube.nodes import NodeActions
from spotguard.observability.logging import configure_logging
from spotguard.sim.cluster_process import ClusterProcess
from spotguard.sim.cluster_workloads import loaded_node, spare_node, spot_node_name

NOTICE_S = 30.0
SAFETY_MARGIN_S = 2.0


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


async def one_run(cluster: ClusterProcess, index: int, pods: int) -> Run:
    await cluster.control.seed(*loaded_node(index, pods))
    node = spot_node_name(index)
    kube = await connect(kubeconfig=str(cluster.kubeconfig), timeout=2.0)
    log = structlog.get_logger().bind(node=node)
    try:
        # Warm the connection as a running agent would have (it polls the API server anyway).
        await kube.request("GET", f"/api/v1/nodes/{node}")
        mark = await cluster.control.mark()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + NOTICE_S - SAFETY_MARGIN_S
        actions = NodeActions(kube=kube, node=node, dry_run=False, log=log)
        await actions.begin(event_id=f"bench-{index}", kind="preempt", deadline="n/a")
        cordoned = loop.time()
        outcome = await drain_node(kube, node, deadline=deadline, log=log, options=DrainOptions())
        records = await cluster.control.requests(since=mark)
    finally:
        await kube.close()
    ours = [r for r in records if r.get("fault") is None]
    durations = [float(r["duration_ms"]) for r in ours]
    left = sum(
        1 for p in outcome.pods if p.outcome.value in {"evicted", "deleted_after_pdb", "gone"}
    )
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
        pods=pods,
    )


def row(size: int, runs: list[Run]) -> list[str]:
    def both(values: list[float], fmt: str) -> str:
        return f"{format(statistics.median(values), fmt)} / {format(percentile(values, 0.99), fmt)}"

    empties = [r.empty_ms for r in runs if r.empty_ms is not None]
    margins = [r.margin_s for r in runs if r.margin_s is not None]
    return [
        str(size),
        str(len(runs)),
        both([r.cordon_ms for r in runs], ".1f"),
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


async def main(sizes: list[int], runs: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            async with ClusterProcess(
                kubeconfig=Path(tmp) / f"kubeconfig-{size}", stderr=Path(tmp) / "emulator.log"
            ) as cluster:
                await cluster.control.seed(spare_node(999))
                results = []
                for i in range(runs):
                    results.append(await one_run(cluster, i + 1, size))
                    print(f"  {size} pods, run {i + 1}/{runs}: {results[-1]}", file=sys.stderr)
                rows.append(row(size, results))
    print()
    print(
        f"spotguard drain, {NOTICE_S:g} s Preempt notice (deadline = NotBefore - "
        f"{SAFETY_MARGIN_S:g} s), every pod takes 1 s to stop; t0 = the notice"
    )
    print_table(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 110, 250])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    configure_logging(fmt="console", level="warning")
    asyncio.run(main(args.sizes, args.runs))
