"""``spotguard simulate-cluster`` in a child process: kubeconfig, request log, scripted faults."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import kmock
import pytest
from kubernetes_asyncio import client, config

from spotguard.sim.cluster import ClusterEmulator
from spotguard.sim.cluster_process import ClusterProcess, ClusterProcessError
from tests.cluster_fixtures import TIMEOUT, make_pod

NODE = "aks-spot-12345678-vmss000000"
T = {"_request_timeout": TIMEOUT}


async def _api(cluster: ClusterProcess) -> client.ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(cluster.kubeconfig), client_configuration=configuration
    )
    return client.ApiClient(configuration)


async def test_kubeconfig_scenario_and_request_log(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    process = ClusterProcess(kubeconfig=kubeconfig, scenario="spot-node")
    async with process as cluster:
        async with await _api(cluster) as api:
            v1 = client.CoreV1Api(api)
            node = await v1.read_node(NODE, **T)
            assert node.metadata.labels["kubernetes.azure.com/scalesetpriority"] == "spot"
            assert node.spec.provider_id.startswith("azure:///subscriptions/")
            pods = await v1.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}", **T)
            owners = {
                (
                    p.metadata.owner_references
                    or [client.V1OwnerReference(api_version="", kind="none", name="", uid="")]
                )[0].kind
                for p in pods.items
            }
            assert {"DaemonSet", "ReplicaSet", "Workflow", "none"} <= owners
            await v1.patch_node(NODE, {"spec": {"unschedulable": True}}, **T)
            await v1.read_namespaced_secret("spotguard-checkpoint", "kubeflow", **T)
        log = await cluster.control.requests()
        assert cluster.control is not None
        code = await process.stop()
    assert code == 0  # SIGTERM is a clean exit
    resource_requests = [r for r in log if r["resource_request"]]
    assert [
        (r["verb"], r["group"], r["resource"], r["namespace"], r["name"], r["status"])
        for r in resource_requests
    ] == [
        ("get", "", "nodes", None, NODE, 200),
        ("list", "", "pods", None, None, 200),
        ("patch", "", "nodes", None, NODE, 200),
        ("get", "", "secrets", "kubeflow", "spotguard-checkpoint", 200),
    ]
    patch = resource_requests[2]
    assert patch["content_type"] == "application/strategic-merge-patch+json"
    assert patch["user_agent"].startswith("OpenAPI-Generator")
    assert patch["at"].endswith("Z")
    assert patch["t"] >= 0


async def test_request_log_file_is_written_as_it_stops(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "emulator-requests.jsonl"
    process = ClusterProcess(kubeconfig=tmp_path / "kc", scenario="spot-node", request_log=path)
    agent = "rbac-probe/1.0"
    async with process as cluster:
        headers = {"User-Agent": agent}
        async with aiohttp.ClientSession(headers=headers, trust_env=False) as http:
            for url in (f"/api/v1/nodes/{NODE}", "/api/v1/namespaces/kubeflow/secrets/nope"):
                async with http.get(cluster.url + url) as resp:
                    await resp.read()
        assert not path.exists()  # written when it stops, not before
        served = await cluster.control.requests()
        code = await process.stop()
    assert code == 0
    assert not path.with_name(path.name + ".tmp").exists()
    written = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert written == served  # the same dicts as GET /_sim/requests
    assert [
        (r["verb"], r["resource"], r["name"], r["status"], r["user_agent"]) for r in written
    ] == [
        ("get", "nodes", NODE, 200, agent),
        ("get", "secrets", "nope", 404, agent),
    ]


async def test_no_request_log_file_without_the_flag(tmp_path: Path) -> None:
    process = ClusterProcess(kubeconfig=tmp_path / "kc")
    async with (
        process as cluster,
        aiohttp.ClientSession(trust_env=False) as http,
        http.get(cluster.url + "/api/v1/nodes") as resp,
    ):
        assert resp.status == 200
    assert process.request_log is None
    assert "--request-log" not in process._args()
    assert sorted(os.listdir(tmp_path)) == ["kc"]  # only the kubeconfig


async def test_scripted_faults_answer_without_changing_state(cluster: ClusterProcess) -> None:
    control = cluster.control
    await control.seed(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
        make_pod("p", node=NODE),
    )
    throttle = await control.add_fault(
        match={"verb": "patch", "resource": "nodes", "name": NODE},
        status=429,
        retry_after=2,
        times=1,
    )
    async with await _api(cluster) as api:
        v1 = client.CoreV1Api(api)
        with pytest.raises(client.ApiException) as throttled:
            await v1.patch_node(NODE, {"spec": {"unschedulable": True}}, **T)
        assert throttled.value.status == 429
        assert throttled.value.headers["Retry-After"] == "2"
        assert json.loads(throttled.value.body)["reason"] == "TooManyRequests"
        assert (await v1.read_node(NODE, **T)).spec.unschedulable is None  # not applied
        await v1.patch_node(NODE, {"spec": {"unschedulable": True}}, **T)  # the fault is used up

        await control.add_fault(
            match={"resource": "pods", "verb": "list"}, status=503, after=1, times=1
        )
        await v1.list_namespaced_pod("default", **T)
        with pytest.raises(client.ApiException) as unavailable:
            await v1.list_namespaced_pod("default", **T)
        assert unavailable.value.status == 503

        await control.add_fault(
            match={"resource": "pods", "subresource": "eviction"}, drop=True, times=1
        )
        with pytest.raises(aiohttp.ClientError):
            await v1.create_namespaced_pod_eviction(
                "p", "default", {"metadata": {"name": "p"}}, **T
            )
        assert (
            await v1.read_namespaced_pod("p", "default", **T)
        ).metadata.deletion_timestamp is None

        await control.add_fault(match={"resource": "pods", "verb": "get"}, delay=0.5, times=1)
        with pytest.raises(asyncio.TimeoutError):
            await v1.read_namespaced_pod("p", "default", _request_timeout=0.2)
        await control.add_fault(match={"resource": "pods", "verb": "get"}, delay=0.1, times=1)
        await v1.read_namespaced_pod("p", "default", **T)

    rules = {r["id"]: r for r in await control.faults()}
    assert rules[throttle["id"]]["hits"] == 1
    log = await control.requests()
    faulted = [(r["verb"], r["resource"], r["subresource"], r["status"]) for r in log if r["fault"]]
    assert faulted == [
        ("patch", "nodes", None, 429),
        ("list", "pods", None, 503),
        ("create", "pods", "eviction", 0),
        ("get", "pods", None, 0),  # held longer than the client waited
        ("get", "pods", None, 200),  # held, then served
    ]
    await control.clear_faults()
    assert await control.faults() == []
    with pytest.raises(ClusterProcessError):
        await control.add_fault(match={"colour": "red"}, status=500)


async def test_settings_can_be_changed_from_outside(cluster: ClusterProcess) -> None:
    settings = await cluster.control.update_settings(ready_after=0.0, stop_after=0.1)
    assert settings["ready_after"] == 0.0
    assert settings["stop_after"] == 0.1
    with pytest.raises(ClusterProcessError):
        await cluster.control.update_settings(ready_after="soon")


async def test_kmock_reactions_override_in_process_without_mutating(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    emulator.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    v1 = client.CoreV1Api(kube)
    assert not emulator.kmock._requests  # nothing recorded for kmock while it has no reactions
    emulator.kmock[kmock.method.PATCH][:1] << 503
    with pytest.raises(client.ApiException) as failed:
        await v1.patch_node(NODE, {"spec": {"unschedulable": True}}, **T)
    assert failed.value.status == 503
    assert (await v1.read_node(NODE, **T)).spec.unschedulable is None
    patched = await v1.patch_node(NODE, {"spec": {"unschedulable": True}}, **T)
    assert patched.spec.unschedulable is True
    assert [r.fault for r in emulator.requests.since(0) if r.verb == "patch"] == ["kmock", None]


async def test_unknown_scenario_is_a_usage_error(tmp_path: Path) -> None:
    process = ClusterProcess(kubeconfig=tmp_path / "kc", scenario="nope")
    with pytest.raises(ClusterProcessError, match="exited with code 2"):
        await process.start()
