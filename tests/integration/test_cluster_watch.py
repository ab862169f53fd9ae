"""Watches through kubernetes-asyncio's `Watch`: resume, 410, timeouts, selectors, bookmarks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client import ApiException

from spotguard.sim.cluster import ClusterEmulator
from spotguard.sim.kube_settings import EmulatorSettings
from tests.cluster_fixtures import TIMEOUT, make_pod

NODE = "aks-spot-12345678-vmss000000"
T = {"_request_timeout": TIMEOUT}


async def _collect(stream: AsyncIterator[dict[str, Any]], into: list[tuple[str, str]]) -> None:
    async for event in stream:
        into.append((event["type"], event["raw_object"]["metadata"].get("name", "")))


async def test_watch_sees_changes_on_one_node_and_ends_at_its_timeout(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    emulator.seed(make_pod("a", node=NODE), make_pod("elsewhere", node="other"))
    v1 = client.CoreV1Api(kube)
    events: list[tuple[str, str]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={NODE}",
            timeout_seconds=1,
            **T,
        )
        collector = asyncio.create_task(_collect(stream, events))
        await asyncio.sleep(0.1)
        emulator.seed(make_pod("b", node=NODE), make_pod("not-mine", node="other"))
        await v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "y"}}}, **T)
        await v1.delete_namespaced_pod("b", "default", grace_period_seconds=0, **T)
        await collector
    assert 0.9 <= loop.time() - start < 2.0
    assert events == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert next(r.verb for r in emulator.requests.since(0) if r.resource == "pods") == "watch"


async def test_watch_resumes_from_a_list_resource_version(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    emulator.seed(make_pod("a"), make_pod("b"))
    v1 = client.CoreV1Api(kube)
    listed = await v1.list_namespaced_pod("default", **T)
    await v1.delete_namespaced_pod("a", "default", **T)
    emulator.seed(make_pod("c"))
    events: list[tuple[str, str]] = []
    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_namespaced_pod,
            "default",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=0.3,
            **T,
        )
        await _collect(stream, events)
    assert events == [("DELETED", "a"), ("ADDED", "c")]


async def test_a_compacted_resource_version_is_410_gone() -> None:
    async with ClusterEmulator(watch_log_size=5) as small:
        small.seed(make_pod("p"))
        async with client.ApiClient(client.Configuration(host=small.url)) as api:
            v1 = client.CoreV1Api(api)
            old = (await v1.list_namespaced_pod("default", **T)).metadata.resource_version
            for i in range(12):
                await v1.patch_namespaced_pod(
                    "p", "default", {"metadata": {"labels": {"i": str(i)}}}, **T
                )
            async with watch.Watch() as w:
                stream = w.stream(
                    v1.list_namespaced_pod, "default", resource_version=old, timeout_seconds=1, **T
                )
                with pytest.raises(ApiException) as gone:
                    await anext(stream)
    assert gone.value.status == 410


async def test_objects_leaving_a_selector_arrive_as_deleted(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    emulator.seed(make_pod("p", labels={"app": "a"}))
    v1 = client.CoreV1Api(kube)
    events: list[tuple[str, str]] = []
    async with watch.Watch() as w:
        stream = w.stream(
            v1.list_namespaced_pod, "default", label_selector="app=a", timeout_seconds=0.5, **T
        )
        collector = asyncio.create_task(_collect(stream, events))
        await asyncio.sleep(0.05)
        await v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "b"}}}, **T)
        await v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"other": "x"}}}, **T)
        await v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "a"}}}, **T)
        await collector
    assert events == [("ADDED", "p"), ("DELETED", "p"), ("ADDED", "p")]


async def test_watch_forever_reconnects_without_losing_or_repeating_events() -> None:
    settings = EmulatorSettings(watch_timeout_cap=0.2, ready_after=0.0)
    async with ClusterEmulator(settings=settings) as emu:
        async with client.ApiClient(client.Configuration(host=emu.url)) as api:
            v1 = client.CoreV1Api(api)
            names: list[str] = []

            async def produce() -> None:
                for i in range(8):
                    emu.seed(make_pod(f"p{i}"))
                    await asyncio.sleep(0.07)

            producer = asyncio.create_task(produce())
            async with watch.Watch() as w:
                async with asyncio.timeout(5):
                    async for event in w.stream(v1.list_namespaced_pod, "default", **T):
                        names.append(event["raw_object"]["metadata"]["name"])
                        if len(names) == 8:
                            w.stop()
                            break
            await producer
        watches = [r for r in emu.requests.since(0) if r.verb == "watch"]
    assert names == [f"p{i}" for i in range(8)]
    assert len(watches) >= 2  # the server ended streams and the client resumed them


async def test_bookmarks_and_initial_events_end() -> None:
    async with ClusterEmulator(settings=EmulatorSettings(bookmark_interval=0.1)) as emu:
        emu.seed(make_pod("p"))
        async with client.ApiClient(client.Configuration(host=emu.url)) as api:
            v1 = client.CoreV1Api(api)
            types: list[str] = []
            async with watch.Watch() as w:
                stream = w.stream(
                    v1.list_namespaced_pod,
                    "default",
                    allow_watch_bookmarks=True,
                    send_initial_events=True,
                    resource_version_match="NotOlderThan",
                    timeout_seconds=0.35,
                    **T,
                )
                async for event in stream:
                    types.append(event["type"])
                    if event["type"] == "BOOKMARK" and len(types) == 2:
                        meta = event["raw_object"]["metadata"]
                        assert meta["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert types[:2] == ["ADDED", "BOOKMARK"]
    assert types.count("BOOKMARK") >= 3
