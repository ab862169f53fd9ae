"""Turn an HTTP request line into what the apiserver's authorizer sees (its ``RequestInfo``).

Follows ``k8s.io/apiserver/pkg/endpoints/request.RequestInfoFactory``: the Kubernetes verb
(get, list, watch, create, update, patch, delete, deletecollection), API group and version,
resource, subresource, namespace and name. These fields are what RBAC rules match, so the
request log built from them gives exact rules, ``resourceNames`` included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

_METHOD_VERBS = {
    "GET": "get",
    "HEAD": "get",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
# Namespace subresources: /api/v1/namespaces/<ns>/status is the namespace's own status.
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})


class BadQuery(ValueError):
    pass


def parse_bool(value: str | None, name: str) -> bool:
    """Go's ``strconv.ParseBool``, which the apiserver applies to ``watch`` and friends."""
    if value is None or value == "":
        return False
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadQuery(f"invalid value {value!r} for {name}: must be a boolean")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    path: str
    verb: str
    is_resource: bool = False
    group: str = ""
    version: str = ""
    resource: str | None = None
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None


def parse_request(method: str, path: str, query: Mapping[str, str]) -> RequestInfo:
    """Classify one request. Raises :class:`BadQuery` for a malformed ``watch`` value."""
    method = method.upper()
    verb = _METHOD_VERBS.get(method, method.lower())
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return RequestInfo(path=path, verb=method.lower())
    if not rest:  # discovery of one group version
        return RequestInfo(path=path, verb=method.lower())

    if rest[0] == "watch":  # deprecated /api/v1/watch/... prefix
        verb, rest = "watch", rest[1:]
    namespace: str | None = None
    if rest and rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    if not rest:
        return RequestInfo(path=path, verb=method.lower())
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None

    if verb != "watch" and method in ("GET", "HEAD"):
        watch = parse_bool(query.get("watch"), "watch")
        verb = "watch" if watch else ("get" if name else "list")
    elif verb == "delete" and name is None:
        verb = "deletecollection"
    if name is None and verb in ("list", "watch"):
        # The authorizer sees a single-object list/watch as naming that object.
        name = single_name_from_field_selector(query.get("fieldSelector", ""))
    return RequestInfo(
        path=path,
        verb=verb,
        is_resource=True,
        group=group,
        version=version,
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
    )


def single_name_from_field_selector(selector: str) -> str | None:
    for term in selector.split(","):
        for op in ("==", "="):
            key, sep, value = term.partition(op)
            if sep and key.strip() == "metadata.name" and not key.endswith("!"):
                return value.strip()
    return None
