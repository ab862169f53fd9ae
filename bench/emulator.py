"""Requests per second the emulated API server sustains with 250 pods.

Runs ``spotguard simulate-cluster`` in its own process (as the tests and the demo do), seeds
nodes, pods, a ReplicaSet and a PodDisruptionBudget through ``/_sim/objects``, then drives each
workload from this process for a fixed time with a few concurrent connections and prints a
table. The last rows repeat the first workload after many requests, to show that the cost of a
request does not grow with request history. Usage::

    .venv/bin/python bench/emulator.py [--pods 250] [--duration 3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client

from spotguard.sim.cluster_process import ClusterProcess

NODES = 5
Request = Callable[[aiohttp.ClientSession, int], Awaitable[None]]


def _objects(pods: int) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node-{n}"}}
        for n in range(NODES)
    ]
    objects.append(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "web", "namespace": "bench", "uid": "rs-web"},
            "spec": {
                "replicas": pods,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
                },
            },
        }
    )
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "web",
        "uid": "rs-web",
        "controller": True,
    }
    objects.extend(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"web-{i:04d}",
                "namespace": "bench",
                "labels": {"app": "web", "shard": str(i % 10)},
                "annotations": {"spotguard.io/checkpoint": "http"},
                "ownerReferences": [owner],
            },
            "spec": {
                "nodeName": f"node-{i % NODES}",
                "containers": [
                    {"name": "c", "image": "nginx", "env": [{"name": "X", "value": "y"}]}
                ],
                "volumes": [{"name": "scratch", "emptyDir": {}}],
            },
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }
        for i in range(pods)
    )
    objects.append(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "bench"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}},
        }
    )
    return objects


def _workloads(url: str, pods: int) -> dict[str, Request]:
    base = f"{url}/api/v1"

    async def get_pod(session: aiohttp.ClientSession, i: int) -> None:
        async with session.get(f"{base}/namespaces/bench/pods/web-{i % pods:04d}") as r:
            await r.read()
            assert r.status == 200

    async def get_node(session: aiohttp.ClientSession, i: int) -> None:
        async with session.get(f"{base}/nodes/node-{i % NODES}") as r:
            await r.read()

    async def list_node_pods(session: aiohttp.ClientSession, i: int) -> None:
        params = {"fieldSelector": f"spec.nodeName=node-{i % NODES}"}
        async with session.get(f"{base}/pods", params=params) as r:
            await r.read()
            assert r.status == 200

    async def list_all_pods(session: aiohttp.ClientSession, i: int) -> None:
        async with session.get(f"{base}/namespaces/bench/pods") as r:
            await r.read()

    async def patch_node(session: aiohttp.ClientSession, i: int) -> None:
        body = {"metadata": {"annotations": {"spotguard.io/bench": str(i)}}}
        headers = {"Content-Type": "application/strategic-merge-patch+json"}
        async with session.patch(f"{base}/nodes/node-{i % NODES}", json=body, headers=headers) as r:
            await r.read()
            assert r.status == 200

    async def patch_pod(session: aiohttp.ClientSession, i: int) -> None:
        # Pods are what the disruption controller follows: every write re-checks the budget.
        body = {"metadata": {"annotations": {"spotguard.io/bench": str(i)}}}
        headers = {"Content-Type": "application/strategic-merge-patch+json"}
        async with session.patch(
            f"{base}/namespaces/bench/pods/web-{i % pods:04d}", json=body, headers=headers
        ) as r:
            await r.read()
            assert r.status == 200

    return {
        "get pod": get_pod,
        "get node": get_node,
        f"list pods on one node ({pods // NODES})": list_node_pods,
        f"list all pods ({pods})": list_all_pods,
        "patch node (SMP)": patch_node,
        "patch pod (SMP, PDB re-check)": patch_pod,
    }


async def _drive(request: Request, *, duration: float, concurrency: int) -> tuple[int, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    counter = iter(range(10**9))

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await request(session, next(counter))
            latencies.append(time.perf_counter() - start)

    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return len(latencies), latencies


async def _client_list(url: str, *, duration: float) -> tuple[int, list[float]]:
    """The same list through kubernetes-asyncio: most of its time is model deserialization."""
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    async with client.ApiClient(client.Configuration(host=url)) as api:
        v1 = client.CoreV1Api(api)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await v1.list_namespaced_pod(
                "bench", field_selector="spec.nodeName=node-0", _request_timeout=30
            )
            latencies.append(time.perf_counter() - start)
    return len(latencies), latencies


def _row(name: str, count: int, latencies: list[float], duration: float) -> str:
    p50 = statistics.median(latencies) * 1000
    p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0.0
    return f"| {name:<40} | {count / duration:>9.0f} | {p50:>8.2f} | {p99:>8.2f} |"


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=250)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per workload")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent connections")
    parser.add_argument("--history", type=int, default=20_000, help="requests before the re-run")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        async with ClusterProcess(kubeconfig=Path(tmp) / "kubeconfig") as cluster:
            await cluster.control.seed(*_objects(args.pods))
            await cluster.control.clear_requests()
            workloads = _workloads(cluster.url, args.pods)
            print(
                f"emulator: {args.pods} pods on {NODES} nodes, {args.concurrency} connections, "
                f"{args.duration:g} s per row, client in a separate process"
            )
            print("| workload                                 |    req/s |  p50 ms |  p99 ms |")
            print("|------------------------------------------|---------:|--------:|--------:|")
            for name, request in workloads.items():
                count, latencies = await _drive(
                    request, duration=args.duration, concurrency=args.concurrency
                )
                print(_row(name, count, latencies, args.duration), flush=True)
            count, latencies = await _client_list(cluster.url, duration=args.duration)
            print(
                _row("kubernetes-asyncio list on one node", count, latencies, args.duration),
                flush=True,
            )

            # Build up request history, then measure the first workload again.
            served = len(await cluster.control.requests())
            filler = workloads["get node"]
            while served < args.history:
                count, _ = await _drive(filler, duration=1.0, concurrency=args.concurrency)
                served += count
            count, latencies = await _drive(
                workloads["get pod"], duration=args.duration, concurrency=args.concurrency
            )
            print(
                _row(f"get pod after {served} requests", count, latencies, args.duration),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
