from __future__ import annotations

import copy
from typing import Any

import pytest

from spotguard.sim.kube_patch import (
    PatchError,
    PatchFormatError,
    apply_patch,
    json_merge_patch,
    json_patch,
    strategic_merge_patch,
)

NODE: dict[str, Any] = {
    "metadata": {"name": "n", "labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
    "spec": {"taints": [{"key": "t1", "effect": "NoSchedule"}], "podCIDRs": ["10.0.0.0/24"]},
    "status": {
        "conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "DiskPressure", "status": "False"},
        ],
    },
}


def test_patches_never_modify_their_input() -> None:
    before = copy.deepcopy(NODE)
    strategic_merge_patch(NODE, {"metadata": {"labels": {"a": None}}, "spec": {"taints": []}})
    json_merge_patch(NODE, {"spec": None})
    json_patch(NODE, [{"op": "remove", "path": "/metadata/labels/a"}])
    assert before == NODE


def test_merge_patch_rfc7386() -> None:
    patched = json_merge_patch(
        NODE, {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"taints": []}}
    )
    assert patched["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert patched["spec"]["taints"] == []
    assert json_merge_patch({"a": [1]}, {"a": {"b": 1}}) == {"a": {"b": 1}}


def test_strategic_merge_replaces_atomic_lists_and_merges_keyed_ones() -> None:
    taint = {"key": "spotguard.io/preempt", "value": "e", "effect": "NoSchedule"}
    patched = strategic_merge_patch(
        NODE,
        {
            "spec": {"taints": [taint], "podCIDRs": ["10.0.1.0/24"], "unschedulable": True},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "VMEventScheduled", "status": "True"},
                ]
            },
            "metadata": {"finalizers": ["y"]},
        },
    )
    assert patched["spec"]["taints"] == [taint]  # no patch strategy in Kubernetes: replaced
    assert patched["spec"]["podCIDRs"] == ["10.0.0.0/24", "10.0.1.0/24"]  # merged set
    assert [(c["type"], c["status"]) for c in patched["status"]["conditions"]] == [
        ("Ready", "False"),
        ("DiskPressure", "False"),
        ("VMEventScheduled", "True"),
    ]
    assert patched["metadata"]["finalizers"] == ["x", "y"]


def test_strategic_merge_directives() -> None:
    deleted = strategic_merge_patch(
        NODE, {"status": {"conditions": [{"type": "DiskPressure", "$patch": "delete"}]}}
    )
    assert [c["type"] for c in deleted["status"]["conditions"]] == ["Ready"]
    replaced = strategic_merge_patch(
        NODE, {"metadata": {"labels": {"$patch": "replace", "only": "me"}}}
    )
    assert replaced["metadata"]["labels"] == {"only": "me"}
    trimmed = strategic_merge_patch(
        NODE, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}
    )
    assert trimmed["metadata"]["finalizers"] == []
    ordered = strategic_merge_patch(
        NODE, {"spec": {"$setElementOrder/taints": [{"key": "t1"}], "unschedulable": True}}
    )
    assert ordered["spec"]["taints"] == NODE["spec"]["taints"]
    assert ordered["spec"]["unschedulable"] is True
    pod = {
        "spec": {"containers": [{"name": "a", "image": "1", "env": [{"name": "X", "value": "1"}]}]}
    }
    merged = strategic_merge_patch(
        pod, {"spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}]}}
    )
    assert merged["spec"]["containers"] == [
        {
            "name": "a",
            "image": "1",
            "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
        }
    ]
    with pytest.raises(PatchError):
        strategic_merge_patch(
            NODE, {"status": {"conditions": [{"status": "True"}]}}
        )  # no merge key


def test_json_patch_rfc6902() -> None:
    ops = [
        {"op": "add", "path": "/spec/taints/-", "value": {"key": "t2", "effect": "NoExecute"}},
        {"op": "test", "path": "/spec/taints/0/key", "value": "t1"},
        {"op": "remove", "path": "/spec/taints/0"},
        {"op": "replace", "path": "/metadata/labels/a", "value": "9"},
        {"op": "copy", "from": "/metadata/labels/a", "path": "/metadata/labels/c"},
        {"op": "move", "from": "/metadata/labels/b", "path": "/metadata/labels/d"},
        {"op": "add", "path": "/metadata/annotations", "value": {"k~/": "v"}},
        {"op": "replace", "path": "/metadata/annotations/k~0~1", "value": "w"},
    ]
    patched = json_patch(NODE, ops)
    assert patched["spec"]["taints"] == [{"key": "t2", "effect": "NoExecute"}]
    assert patched["metadata"]["labels"] == {"a": "9", "c": "9", "d": "2"}
    assert patched["metadata"]["annotations"] == {"k~/": "w"}


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "test", "path": "/metadata/name", "value": "other"}],
        [{"op": "remove", "path": "/metadata/missing"}],
        [{"op": "replace", "path": "/spec/taints/5", "value": 1}],
        [{"op": "add", "path": "/nope/deeper", "value": 1}],
    ],
)
def test_json_patch_failures_are_422(ops: list[dict[str, Any]]) -> None:
    with pytest.raises(PatchError):
        json_patch(NODE, ops)


@pytest.mark.parametrize(
    "ops",
    [
        {"op": "add"},
        [{"path": "/a"}],
        [{"op": "jump", "path": "/a"}],
        [{"op": "add", "path": "a", "value": 1}],
    ],
)
def test_malformed_json_patches_are_400(ops: Any) -> None:
    with pytest.raises(PatchFormatError):
        json_patch(NODE, ops)


def test_apply_patch_dispatches_on_content_type() -> None:
    body = {"metadata": {"labels": {"a": None}}}
    assert (
        "a"
        not in apply_patch("application/merge-patch+json; charset=utf-8", NODE, body)["metadata"][
            "labels"
        ]
    )
    assert (
        "a"
        not in apply_patch("application/strategic-merge-patch+json", NODE, body)["metadata"][
            "labels"
        ]
    )
    with pytest.raises(PatchFormatError):
        apply_patch("application/json-patch+json", NODE, body)  # a dict is not a JSON patch
    with pytest.raises(LookupError):
        apply_patch("application/xml", NODE, body)
