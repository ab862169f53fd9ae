from __future__ import annotations

import pytest

from spotguard.sim.kube_paths import BadQuery, parse_request


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/api/v1/nodes/n1", {}, ("get", "", "nodes", None, None, "n1")),
        (
            "GET",
            "/api/v1/pods",
            {"fieldSelector": "spec.nodeName=n1"},
            ("list", "", "pods", None, None, None),
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"watch": "True"},
            ("watch", "", "pods", None, "ns", None),
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"watch": "0"},
            ("list", "", "pods", None, "ns", None),
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/pods",
            {"watch": "1", "fieldSelector": "metadata.name=p"},
            ("watch", "", "pods", None, "ns", "p"),
        ),
        ("GET", "/api/v1/watch/namespaces/ns/pods/p", {}, ("watch", "", "pods", None, "ns", "p")),
        (
            "POST",
            "/api/v1/namespaces/ns/pods/p/eviction",
            {},
            ("create", "", "pods", "eviction", "ns", "p"),
        ),
        ("PATCH", "/api/v1/nodes/n1/status", {}, ("patch", "", "nodes", "status", None, "n1")),
        (
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l",
            {},
            ("update", "coordination.k8s.io", "leases", None, "ns", "l"),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/ns/pods",
            {},
            ("deletecollection", "", "pods", None, "ns", None),
        ),
        ("DELETE", "/api/v1/namespaces/ns", {}, ("delete", "", "namespaces", None, "ns", "ns")),
        (
            "GET",
            "/api/v1/namespaces/ns/status",
            {},
            ("get", "", "namespaces", "status", "ns", "ns"),
        ),
    ],
)
def test_resource_requests(
    method: str,
    path: str,
    query: dict[str, str],
    expected: tuple[str, str, str, str | None, str | None, str | None],
) -> None:
    info = parse_request(method, path, query)
    assert info.is_resource
    assert (
        info.verb,
        info.group,
        info.resource,
        info.subresource,
        info.namespace,
        info.name,
    ) == expected


@pytest.mark.parametrize(
    "path", ["/", "/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1", "/version"]
)
def test_discovery_is_not_a_resource_request(path: str) -> None:
    info = parse_request("GET", path, {})
    assert not info.is_resource
    assert info.verb == "get"


def test_watch_must_be_a_boolean() -> None:
    with pytest.raises(BadQuery):
        parse_request("GET", "/api/v1/pods", {"watch": "yes"})
