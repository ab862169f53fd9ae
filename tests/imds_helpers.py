"""Shared pieces for tests that run spotguard's IMDS client against the simulator."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry

from spotguard.observability.metrics import Metrics
from spotguard.sim.imds import RequestRecord
from spotguard.sources.imds import ImdsClient, RequestSpacer, make_session

VM = "aks-spot-12345678-vmss_3"
NEIGHBOUR = "aks-spot-12345678-vmss_4"


@asynccontextmanager
async def imds_client(
    url: str, *, timeout: float = 1.0, metrics: Metrics | None = None
) -> AsyncIterator[ImdsClient]:
    async with make_session() as session:
        yield ImdsClient(
            session=session,
            base_url=url,
            events_api_version="2020-07-01",
            instance_api_version="2021-02-01",
            request_timeout=timeout,
            spacer=RequestSpacer(),
            metrics=metrics or Metrics(CollectorRegistry()),
        )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def max_in_window(records: Sequence[RequestRecord], window: float = 1.0) -> int:
    """Most requests that arrived within any half-open window of ``window`` seconds."""
    times = sorted(r.loop_time for r in records)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def gaps(records: Sequence[RequestRecord]) -> list[float]:
    times = sorted(r.loop_time for r in records)
    return [b - a for a, b in itertools.pairwise(times)]
