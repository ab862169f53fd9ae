from __future__ import annotations

import pytest

from spotguard.sim.kube_selectors import (
    SelectorError,
    compile_filter,
    fields_match,
    from_label_selector_object,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)

LABELS = {"app": "web", "tier": "front", "replicas": "3"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app!=web", False),
        ("app!=api", True),
        ("missing!=x", True),
        ("app in (api, web)", True),
        ("app notin (api,web)", False),
        ("missing notin (x)", True),
        ("tier", True),
        ("!tier", False),
        ("!missing", True),
        ("app=web,tier=back", False),
        ("app in (web),tier,!missing", True),
        ("replicas>2", True),
        ("replicas<3", False),
        ("example.com/role=x", False),
    ],
)
def test_label_selector(selector: str, expected: bool) -> None:
    assert labels_match(parse_label_selector(selector), LABELS) is expected


@pytest.mark.parametrize(
    "bad", ["app in (web", "app=we b", "=web", "app in web", "!", "a,,b", "-bad=x"]
)
def test_malformed_label_selector(bad: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(bad)


def test_label_selector_object_as_used_by_budgets() -> None:
    selector = from_label_selector_object(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}],
        }
    )
    assert labels_match(selector, LABELS)
    assert not labels_match(selector, {"app": "web"})
    assert labels_match(from_label_selector_object({}), {})  # empty selects everything
    assert not labels_match(from_label_selector_object(None), LABELS)  # none selects nothing
    with pytest.raises(SelectorError):
        from_label_selector_object({"matchExpressions": [{"key": "a", "operator": "Maybe"}]})


POD = {
    "metadata": {"name": "p", "namespace": "ns"},
    "spec": {"nodeName": "n1"},
    "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}]},
}
POD_FIELDS = frozenset(
    {"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase", "status.podIPs"}
)


def test_field_selectors_use_the_whitelist() -> None:
    assert fields_match(
        parse_field_selector("spec.nodeName=n1,status.phase!=Failed", POD_FIELDS), POD
    )
    assert not fields_match(parse_field_selector("spec.nodeName==n2", POD_FIELDS), POD)
    assert fields_match(parse_field_selector("status.podIPs=10.0.0.1", POD_FIELDS), POD)
    with pytest.raises(SelectorError, match="field label not supported"):
        parse_field_selector("spec.hostname=x", POD_FIELDS)
    with pytest.raises(SelectorError):
        parse_field_selector("spec.nodeName", POD_FIELDS)


def test_missing_booleans_compare_as_false() -> None:
    node = {"metadata": {"name": "n"}, "spec": {}}
    assert fields_match(
        parse_field_selector("spec.unschedulable=false", frozenset({"spec.unschedulable"})), node
    )
    cordoned = {"metadata": {"name": "n"}, "spec": {"unschedulable": True}}
    assert fields_match(
        parse_field_selector("spec.unschedulable=true", frozenset({"spec.unschedulable"})), cordoned
    )


def test_compiled_filter_combines_both() -> None:
    accept = compile_filter(
        parse_label_selector("app=web"), parse_field_selector("spec.nodeName=n1", POD_FIELDS)
    )
    assert accept({**POD, "metadata": {**POD["metadata"], "labels": {"app": "web"}}})
    assert not accept(POD)
