"""spotguard's Kubernetes client: kubeconfig loading, errors and watches, over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client as k8s

from spotguard import __version__
from spotguard.kube.client import KubeClient, KubeError, connect, user_agent
from spotguard.sim.cluster import ClusterEmulator
from spotguard.sim.cluster_process import ClusterProcess

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {}}


@pytest.fixture
async def kube(cluster: ClusterProcess) -> AsyncIterator[KubeClient]:
    # A kubeconfig with a plain http://127.0.0.1 server and no credentials must do.
    client = await connect(kubeconfig=str(cluster.kubeconfig), timeout=2)
    yield client
    await client.close()


async def test_connects_from_a_plain_http_kubeconfig(
    kube: KubeClient, cluster: ClusterProcess
) -> None:
    assert kube.host.rstrip("/") == cluster.url.rstrip("/")
    await cluster.control.seed(NODE)
    node = await kube.request("GET", "/api/v1/nodes/n1")
    assert node["metadata"]["name"] == "n1"


async def test_every_request_names_spotguard_and_its_command(cluster: ClusterProcess) -> None:
    # Audit logs and APF flow schemas tell the agent from queue mode by this header.
    await cluster.control.seed(NODE)
    since = await cluster.control.mark()
    queue = await connect(kubeconfig=str(cluster.kubeconfig), timeout=2, agent=user_agent("queue"))
    try:
        await queue.request("GET", "/api/v1/nodes/n1")
        await queue.request(
            "PATCH",
            "/api/v1/nodes/n1",
            body={"metadata": {"labels": {"a": "b"}}},
            content_type="application/merge-patch+json",
        )
    finally:
        await queue.close()
    sent = {r["user_agent"] for r in await cluster.control.requests(since)}
    assert sent == {f"spotguard/{__version__} (queue)"}


async def test_kubeconfig_from_the_environment(
    cluster: ClusterProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    client = await connect(kubeconfig=None, timeout=2)
    try:
        assert (await client.request("GET", "/api/v1/namespaces/default"))["kind"] == "Namespace"
    finally:
        await client.close()


async def test_no_configuration_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeError, match="no Kubernetes configuration"):
        await connect(kubeconfig=None, timeout=1)


async def test_api_errors_carry_status_reason_and_retry_after(
    kube: KubeClient, cluster: ClusterProcess
) -> None:
    with pytest.raises(KubeError) as missing:
        await kube.request("GET", "/api/v1/nodes/nope")
    assert (missing.value.status, missing.value.reason) == (404, "NotFound")
    assert not missing.value.transient

    await cluster.control.add_fault(
        match={"verb": "list", "resource": "nodes"}, status=429, retry_after=3, times=1
    )
    with pytest.raises(KubeError) as throttled:
        await kube.request("GET", "/api/v1/nodes")
    assert throttled.value.status == 429
    assert throttled.value.retry_after == 3
    assert throttled.value.transient


async def test_no_answer_is_status_zero(kube: KubeClient, cluster: ClusterProcess) -> None:
    await cluster.control.add_fault(match={"resource": "nodes"}, drop=True, times=3)
    with pytest.raises(KubeError) as dropped:
        await kube.request("GET", "/api/v1/nodes")
    assert dropped.value.status == 0
    assert dropped.value.transient

    await cluster.control.clear_faults()
    await cluster.control.add_fault(match={"resource": "nodes"}, delay=3.0, times=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(KubeError, match=r"no answer within 0\.5s"):
        await kube.request("GET", "/api/v1/nodes", timeout=0.5)
    assert loop.time() - started < 1.5  # the explicit timeout held


async def test_watch_streams_changes_until_the_server_ends_it(
    kube: KubeClient, cluster: ClusterProcess
) -> None:
    listing = await kube.request("GET", "/api/v1/nodes")
    rv = listing["metadata"]["resourceVersion"]
    seen: list[tuple[str, str]] = []

    async def watch() -> None:
        async for event in kube.watch(
            "/api/v1/nodes", query={"resourceVersion": rv}, timeout_seconds=2
        ):
            seen.append((event.type, event.object["metadata"]["name"]))

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    await cluster.control.seed(NODE)
    await kube.request("DELETE", "/api/v1/nodes/n1")
    await asyncio.wait_for(task, 5)
    assert seen == [("ADDED", "n1"), ("DELETED", "n1")]


async def test_watch_from_a_compacted_version_is_410() -> None:
    async with ClusterEmulator(watch_log_size=3) as emulator:
        client = KubeClient(k8s.ApiClient(k8s.Configuration(host=emulator.url)), timeout=2)
        try:
            first = await client.request("GET", "/api/v1/namespaces")
            for i in range(8):  # push the listed version out of the watch history
                await client.request(
                    "POST", "/api/v1/nodes", body={**NODE, "metadata": {"name": f"n{i}"}}
                )
            with pytest.raises(KubeError) as gone:
                async for _ in client.watch(
                    "/api/v1/nodes",
                    query={"resourceVersion": first["metadata"]["resourceVersion"]},
                    timeout_seconds=1,
                ):
                    pass
            assert gone.value.status == 410
        finally:
            await client.close()
