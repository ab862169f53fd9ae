"""The real kubernetes-asyncio client against the in-process emulator: every verb the agent uses."""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client import ApiException

from spotguard.sim.cluster import ClusterEmulator
from tests.cluster_fixtures import TIMEOUT, make_pod, wait_for

NODE = "aks-spot-12345678-vmss000000"
T = {"_request_timeout": TIMEOUT}


def _node(name: str = NODE, **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"pool": "spot"}},
        "spec": spec,
    }


def _status(exc: ApiException) -> dict[str, object]:
    body: dict[str, object] = json.loads(exc.body)
    return body


async def test_cordon_is_a_strategic_merge_patch_and_null_uncordons(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    emulator.seed(_node())
    v1 = client.CoreV1Api(kube)
    before = await v1.read_node(NODE, **T)

    cordoned = await v1.patch_node(NODE, {"spec": {"unschedulable": True}}, **T)
    assert cordoned.spec.unschedulable is True
    assert int(cordoned.metadata.resource_version) > int(before.metadata.resource_version)
    again = await v1.patch_node(NODE, {"spec": {"unschedulable": True}}, **T)
    assert again.metadata.resource_version == cordoned.metadata.resource_version  # no-op write
    uncordoned = await v1.patch_node(NODE, {"spec": {"unschedulable": None}}, **T)
    assert uncordoned.spec.unschedulable is None

    log = emulator.requests.since(0)
    assert [(r.verb, r.resource, r.name, r.status) for r in log] == [
        ("get", "nodes", NODE, 200),
        ("patch", "nodes", NODE, 200),
        ("patch", "nodes", NODE, 200),
        ("patch", "nodes", NODE, 200),
    ]
    assert log[1].content_type == "application/strategic-merge-patch+json"


async def test_taints_are_read_modify_write_with_conflicts(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    emulator.seed(_node(taints=[{"key": "a", "value": "1", "effect": "NoSchedule"}]))
    v1 = client.CoreV1Api(kube)
    node = await v1.read_node(NODE, **T)
    taints = [t.to_dict() for t in node.spec.taints]
    mine = {"key": "spotguard.io/preempt", "value": "ev-1", "effect": "NoSchedule"}
    body = {
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"taints": [*taints, mine]},
    }
    updated = await v1.patch_node(NODE, body, **T)
    assert [t.key for t in updated.spec.taints] == [
        "a",
        "spotguard.io/preempt",
    ]  # atomic list: replaced

    with pytest.raises(ApiException) as stale:
        await v1.patch_node(NODE, body, **T)  # same resourceVersion again
    assert stale.value.status == 409
    assert _status(stale.value)["reason"] == "Conflict"

    # JSON patch with a test op, and a JSON merge patch forced by content type.
    ops = [
        {"op": "test", "path": "/spec/taints/0/key", "value": "a"},
        {"op": "remove", "path": "/spec/taints/0"},
    ]
    patched = await v1.patch_node(NODE, ops, **T)
    assert [t.key for t in patched.spec.taints] == ["spotguard.io/preempt"]
    with pytest.raises(ApiException) as failed:
        await v1.patch_node(NODE, ops, **T)
    assert failed.value.status == 422
    merged = await v1.patch_node(
        NODE,
        {"metadata": {"annotations": {"x": "y"}}},
        _content_type="application/merge-patch+json",
        **T,
    )
    assert merged.metadata.annotations == {"x": "y"}
    bad = {"spec": {"taints": [{"key": "k", "effect": "Sometimes"}]}}
    with pytest.raises(ApiException) as invalid:
        await v1.patch_node(NODE, bad, **T)
    assert invalid.value.status == 422
    assert "spec.taints[0].effect" in _status(invalid.value)["message"]  # type: ignore[operator]
    with pytest.raises(ApiException) as apply:
        await v1.patch_node(NODE, {"spec": {}}, _content_type="application/apply-patch+yaml", **T)
    assert apply.value.status == 415


async def test_status_subresource_and_main_endpoint_are_separate(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    emulator.seed(_node())
    v1 = client.CoreV1Api(kube)
    condition = {"type": "VMEventScheduled", "status": "True", "reason": "Preempt", "message": "x"}
    await v1.patch_node_status(NODE, {"status": {"conditions": [condition]}}, **T)
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": ""}
    node = await v1.patch_node_status(NODE, {"status": {"conditions": [ready]}}, **T)
    assert {c.type for c in node.status.conditions} == {
        "VMEventScheduled",
        "Ready",
    }  # merged by type
    ignored = await v1.patch_node(
        NODE, {"status": {"conditions": []}, "metadata": {"labels": {"l": "v"}}}, **T
    )
    assert len(ignored.status.conditions) == 2
    assert ignored.metadata.labels["l"] == "v"


async def test_selectors_and_pagination(emulator: ClusterEmulator, kube: client.ApiClient) -> None:
    emulator.seed(_node(), _node("other"))
    for i in range(5):
        emulator.seed(
            make_pod(
                f"p{i}", node=NODE if i < 3 else "other", labels={"app": "a" if i % 2 else "b"}
            )
        )
    v1 = client.CoreV1Api(kube)
    on_node = await v1.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}", **T)
    assert [p.metadata.name for p in on_node.items] == ["p0", "p1", "p2"]
    assert on_node.kind == "PodList"
    both = await v1.list_namespaced_pod(
        "default", field_selector=f"spec.nodeName={NODE}", label_selector="app=a", **T
    )
    assert [p.metadata.name for p in both.items] == ["p1"]
    sets = await v1.list_namespaced_pod(
        "default", label_selector="app in (a),app notin (b),!missing", **T
    )
    assert [p.metadata.name for p in sets.items] == ["p1", "p3"]
    cordoned = await v1.list_node(field_selector="spec.unschedulable=false", **T)
    assert len(cordoned.items) == 2
    with pytest.raises(ApiException) as unsupported:
        await v1.list_namespaced_pod("default", field_selector="spec.hostname=x", **T)
    assert unsupported.value.status == 400
    assert "field label not supported" in _status(unsupported.value)["message"]  # type: ignore[operator]

    names, token = [], None
    while True:
        page = await v1.list_namespaced_pod("default", limit=2, _continue=token, **T)
        names += [p.metadata.name for p in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == ["p0", "p1", "p2", "p3", "p4"]


async def test_create_get_delete_and_errors(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    v1 = client.CoreV1Api(kube)
    pod = make_pod("web", namespace="default")
    del pod["status"]
    created = await v1.create_namespaced_pod("default", pod, **T)
    assert created.metadata.uid
    assert created.metadata.creation_timestamp
    assert created.status.phase == "Pending"
    assert created.spec.termination_grace_period_seconds == 30
    with pytest.raises(ApiException) as exists:
        await v1.create_namespaced_pod("default", pod, **T)
    assert (exists.value.status, _status(exists.value)["reason"]) == (409, "AlreadyExists")
    with pytest.raises(ApiException) as mismatch:
        await v1.create_namespaced_pod("nope", pod, **T)
    assert mismatch.value.status == 400  # body namespace "default" vs URL "nope"
    del pod["metadata"]["namespace"]
    with pytest.raises(ApiException) as missing_ns:
        await v1.create_namespaced_pod("nope", pod, **T)
    assert missing_ns.value.status == 404
    with pytest.raises(ApiException) as invalid:
        await v1.create_namespaced_pod(
            "default", {"metadata": {"name": "Bad_Name"}, "spec": {"containers": []}}, **T
        )
    assert invalid.value.status == 422
    with pytest.raises(ApiException) as not_found:
        await v1.read_namespaced_pod("ghost", "default", **T)
    assert (not_found.value.status, _status(not_found.value)["reason"]) == (404, "NotFound")
    with pytest.raises(ApiException) as precondition:
        await v1.delete_namespaced_pod(
            "web", "default", body=client.V1DeleteOptions(preconditions={"uid": "x"}), **T
        )
    assert precondition.value.status == 409
    # An unscheduled pod goes at once; nothing runs it.
    await v1.delete_namespaced_pod("web", "default", **T)
    assert emulator.store.get(emulator.api.pods, "default", "web") is None


async def test_deleted_pods_take_their_possibly_shortened_grace_period(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    emulator.seed(
        _node(), make_pod("slow", node=NODE, grace=30), make_pod("quick", node=NODE, grace=30)
    )
    v1 = client.CoreV1Api(kube)
    loop = asyncio.get_running_loop()
    start = loop.time()
    going = await v1.delete_namespaced_pod("slow", "default", grace_period_seconds=1, **T)
    assert going.metadata.deletion_timestamp is not None
    assert going.metadata.deletion_grace_period_seconds == 1
    still = await v1.read_namespaced_pod("slow", "default", **T)
    assert still.metadata.deletion_timestamp is not None

    async def gone() -> bool:
        try:
            await v1.read_namespaced_pod("slow", "default", **T)
        except ApiException as exc:
            return exc.status == 404
        return False

    await wait_for(gone, timeout=3)
    assert 0.9 <= loop.time() - start < 2.5
    # Containers that exit on SIGTERM stop before the grace period ends.
    emulator.settings.stop_after = 0.1
    await v1.delete_namespaced_pod("quick", "default", **T)
    await wait_for(
        lambda: emulator.store.get(emulator.api.pods, "default", "quick") is None, timeout=2
    )


async def test_eviction_respects_the_budget_and_replacements_restore_it(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    spare = _node("spare")
    emulator.seed(_node(), spare)
    rs_owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "web-1",
        "uid": "rs-uid",
        "controller": True,
    }
    emulator.seed(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "web-1", "namespace": "default", "uid": "rs-uid"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                },
            },
        },
        *(
            make_pod(f"web-{i}", node=NODE, labels={"app": "web"}, owner=rs_owner, grace=1)
            for i in range(2)
        ),
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}},
        },
    )
    await client.CoreV1Api(kube).patch_node(NODE, {"spec": {"unschedulable": True}}, **T)
    v1, policy = client.CoreV1Api(kube), client.PolicyV1Api(kube)
    pdb = await policy.read_namespaced_pod_disruption_budget("web", "default", **T)
    assert (pdb.status.expected_pods, pdb.status.disruptions_allowed) == (2, 1)

    def eviction(name: str) -> client.V1Eviction:
        return client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace="default"))

    emulator.settings.ready_after = 0.3
    await v1.create_namespaced_pod_eviction("web-0", "default", eviction("web-0"), **T)
    with pytest.raises(ApiException) as refused:
        await v1.create_namespaced_pod_eviction("web-1", "default", eviction("web-1"), **T)
    assert refused.value.status == 429
    body = _status(refused.value)
    assert body["details"]["causes"][0]["reason"] == "DisruptionBudget"  # type: ignore[index]

    # The ReplicaSet replaced web-0 at once, on the node that is not cordoned.
    pods = (await v1.list_namespaced_pod("default", label_selector="app=web", **T)).items
    replacement = next(p for p in pods if p.metadata.name not in ("web-0", "web-1"))
    assert replacement.spec.node_name == "spare"
    assert replacement.metadata.owner_references[0].uid == "rs-uid"

    async def allowed() -> bool:
        budget = await policy.read_namespaced_pod_disruption_budget("web", "default", **T)
        return bool(budget.status.disruptions_allowed == 1)

    await wait_for(allowed, timeout=3)  # the replacement became Ready
    await v1.create_namespaced_pod_eviction("web-1", "default", eviction("web-1"), **T)
    log = [r for r in emulator.requests.since(0) if r.subresource == "eviction"]
    assert [(r.verb, r.resource, r.name, r.status) for r in log] == [
        ("create", "pods", "web-0", 201),
        ("create", "pods", "web-1", 429),
        ("create", "pods", "web-1", 201),
    ]


async def test_eviction_edge_cases(emulator: ClusterEmulator, kube: client.ApiClient) -> None:
    emulator.seed(
        _node(), make_pod("lonely", node=NODE), make_pod("doubly", node=NODE, labels={"a": "1"})
    )
    for name in ("one", "two"):
        emulator.seed(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"minAvailable": 0, "selector": {"matchLabels": {"a": "1"}}},
            }
        )
    v1 = client.CoreV1Api(kube)
    with pytest.raises(ApiException) as several:
        await v1.create_namespaced_pod_eviction(
            "doubly", "default", {"metadata": {"name": "doubly"}}, **T
        )
    assert several.value.status == 500
    with pytest.raises(ApiException) as missing:
        await v1.create_namespaced_pod_eviction(
            "ghost", "default", {"metadata": {"name": "ghost"}}, **T
        )
    assert missing.value.status == 404
    await v1.create_namespaced_pod_eviction(
        "lonely", "default", {"metadata": {"name": "lonely"}}, **T
    )


async def test_events_secrets_and_leases(emulator: ClusterEmulator, kube: client.ApiClient) -> None:
    emulator.seed(_node())
    v1, coordination = client.CoreV1Api(kube), client.CoordinationV1Api(kube)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{NODE}."),
        involved_object=client.V1ObjectReference(kind="Node", name=NODE, api_version="v1"),
        reason="SpotguardCordoned",
        message="cordoned",
        type="Normal",
        source=client.V1EventSource(component="spotguard"),
    )
    first = await v1.create_namespaced_event("default", event, **T)
    second = await v1.create_namespaced_event("default", event, **T)
    assert first.metadata.name != second.metadata.name
    assert first.metadata.name.startswith(f"{NODE}.")
    found = await v1.list_namespaced_event(
        "default",
        field_selector=f"involvedObject.name={NODE},reason=SpotguardCordoned,source=spotguard",
        **T,
    )
    assert len(found.items) == 2

    secret = {
        "metadata": {"name": "spotguard-checkpoint"},
        "stringData": {"x": "y"},
        "data": {"token": "dG9r"},
    }
    await v1.create_namespaced_secret("default", secret, **T)
    read = await v1.read_namespaced_secret("spotguard-checkpoint", "default", **T)
    assert read.data == {"token": "dG9r"}
    assert read.type == "Opaque"

    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="spotguard"), spec=client.V1LeaseSpec(holder_identity="a")
    )
    created = await coordination.create_namespaced_lease("default", lease, **T)
    created.spec.holder_identity = "b"
    renewed = await coordination.replace_namespaced_lease("spotguard", "default", created, **T)
    assert renewed.spec.holder_identity == "b"
    with pytest.raises(ApiException) as stale:
        await coordination.replace_namespaced_lease("spotguard", "default", created, **T)  # old rv
    assert stale.value.status == 409


async def test_finalizers_hold_deletion_until_removed(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    v1 = client.CoreV1Api(kube)
    await v1.create_namespaced_config_map(
        "default", {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}, **T
    )
    await v1.delete_namespaced_config_map("held", "default", **T)
    held = await v1.read_namespaced_config_map("held", "default", **T)
    assert held.metadata.deletion_timestamp is not None
    await v1.patch_namespaced_config_map(
        "held", "default", [{"op": "remove", "path": "/metadata/finalizers"}], **T
    )
    with pytest.raises(ApiException) as gone:
        await v1.read_namespaced_config_map("held", "default", **T)
    assert gone.value.status == 404


async def test_pod_spec_is_immutable_apart_from_images(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    emulator.seed(_node(), _node("other"), make_pod("p", node=NODE))
    v1 = client.CoreV1Api(kube)
    image = [{"op": "replace", "path": "/spec/containers/0/image", "value": "busybox:2"}]
    assert (await v1.patch_namespaced_pod("p", "default", image, **T)).spec.containers[
        0
    ].image == "busybox:2"
    with pytest.raises(ApiException) as moved:
        await v1.patch_namespaced_pod("p", "default", {"spec": {"nodeName": "other"}}, **T)
    assert moved.value.status == 422
    assert "pod updates may not change fields" in _status(moved.value)["message"]  # type: ignore[operator]
    annotated = await v1.patch_namespaced_pod(
        "p", "default", {"metadata": {"annotations": {"spotguard.io/checkpoint-result": "{}"}}}, **T
    )
    assert annotated.metadata.annotations["spotguard.io/checkpoint-result"] == "{}"


async def test_dry_run_deletecollection_and_namespace_deletion(
    emulator: ClusterEmulator, kube: client.ApiClient
) -> None:
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "rs", "namespace": "team", "uid": "rs-uid"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
    }
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "rs",
        "uid": "rs-uid",
        "controller": True,
    }
    emulator.seed(
        _node(),
        rs,
        *(
            make_pod(f"p{i}", namespace="team", node=NODE, owner=owner, labels={"a": "b"})
            for i in range(3)
        ),
    )
    v1 = client.CoreV1Api(kube)
    await v1.delete_namespaced_pod("p0", "team", dry_run="All", **T)
    assert (await v1.read_namespaced_pod("p0", "team", **T)).metadata.deletion_timestamp is None
    await v1.create_namespaced_config_map(
        "team", {"metadata": {"name": "preview"}}, dry_run="All", **T
    )
    assert not (await v1.list_namespaced_config_map("team", **T)).items

    await v1.delete_collection_namespaced_pod(
        "team", label_selector="a=b", grace_period_seconds=0, **T
    )
    remaining = (await v1.list_namespaced_pod("team", **T)).items
    assert {p.metadata.name for p in remaining}.isdisjoint({"p0", "p1", "p2"})
    assert len(remaining) == 3  # the ReplicaSet replaced them

    await v1.delete_namespace("team", **T)
    assert not (await v1.list_pod_for_all_namespaces(**T)).items  # no replacement outlives it
    with pytest.raises(ApiException) as gone:
        await v1.read_namespace("team", **T)
    assert gone.value.status == 404
