"""What ``spotguard demo`` follows while the agent drains: watches of the node and its pods,
the emulator's request log (its audit log) and the agent's log lines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from spotguard.kube.client import JSON, KubeClient, KubeError
from spotguard.sim.cluster_process import ClusterControl, ClusterProcessError

PODS_PATH = "/api/v1/pods"
NODES_PATH = "/api/v1/nodes"
REQUEST_LOG_POLL = 0.2


def resource_version(listing: JSON) -> str:
    return str((listing.get("metadata") or {}).get("resourceVersion") or "")


async def follow_watch(
    kube: KubeClient,
    path: str,
    query: Mapping[str, str],
    version: str,
    on_event: Callable[[str, JSON], None],
) -> None:
    """Watch from ``version``; after a failure, relist (as ADDED, then a RELISTED event with
    the uids ``present``) and watch again."""
    while True:
        try:
            stream = kube.watch(
                path,
                query={**query, "resourceVersion": version, "allowWatchBookmarks": True},
                timeout_seconds=30,
            )
            async with contextlib.aclosing(stream):
                async for event in stream:
                    version = resource_version(event.object) or version
                    if event.type != "BOOKMARK":
                        on_event(event.type, event.object)
        except KubeError:
            await asyncio.sleep(0.2)
            with contextlib.suppress(KubeError):
                listing = await kube.request("GET", path, query=query)
                version = str(listing["metadata"]["resourceVersion"])
                items = listing.get("items") or []
                present = {str((i.get("metadata") or {}).get("uid")) for i in items}
                for item in items:
                    on_event("ADDED", item)
                on_event("RELISTED", {"present": sorted(present)})


async def follow_requests(
    control: ClusterControl, since: int, on_entry: Callable[[Mapping[str, Any]], None]
) -> None:
    """The emulator's request log from after ``since``, polled."""
    while True:
        with contextlib.suppress(ClusterProcessError, aiohttp.ClientError, TimeoutError):
            for entry in await control.requests(since):
                since = max(since, int(entry["seq"]))
                on_entry(entry)
        await asyncio.sleep(REQUEST_LOG_POLL)


async def follow_lines(stream: asyncio.StreamReader, on_line: Callable[[bytes], None]) -> None:
    """Every line of ``stream`` (the agent's stderr) to its end."""
    while raw := await stream.readline():
        on_line(raw)
