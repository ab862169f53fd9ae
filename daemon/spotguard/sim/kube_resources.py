"""The kinds the emulated API server serves, and the discovery documents built from them.

One table drives discovery (``/api``, ``/apis``, ``/api/v1``, ...), the minimal OpenAPI v3
documents ``kubectl create -f`` needs, field-selector whitelists and status-subresource rules.
Adding a plain kind (stored, listed, watched, patched) is one row here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_NAMESPACED_META_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
_CLUSTER_META_FIELDS = frozenset({"metadata.name"})


@dataclass(frozen=True, slots=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    #: subresources besides the object itself; "status" gets status-subresource semantics
    subresources: tuple[str, ...] = ()
    #: field selectors the real apiserver accepts beyond metadata.name/namespace
    extra_fields: frozenset[str] = frozenset()
    #: metadata.generation is set and bumped on spec changes
    tracks_generation: bool = False
    categories: tuple[str, ...] = ()
    selectable_fields: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        meta = _NAMESPACED_META_FIELDS if self.namespaced else _CLUSTER_META_FIELDS
        object.__setattr__(self, "selectable_fields", meta | self.extra_fields)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def describe(self, name: str) -> str:
        """How the apiserver names an object in messages: ``pods "x"``, ``leases.coordi...``."""
        resource = f"{self.plural}.{self.group}" if self.group else self.plural
        return f'{resource} "{name}"'

    def base_path(self, namespace: str | None) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"


_POD_FIELDS = frozenset(
    {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.podIPs",
        "status.nominatedNodeName",
    }
)
_EVENT_FIELDS = frozenset(
    {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    }
)

# fmt: off
BUILTIN_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", False, ("ns",), ("status",),
                 frozenset({"status.phase"})),
    ResourceType("", "v1", "nodes", "Node", False, ("no",), ("status",),
                 frozenset({"spec.unschedulable"})),
    ResourceType("", "v1", "pods", "Pod", True, ("po",), ("status", "eviction"), _POD_FIELDS,
                 tracks_generation=True, categories=("all",)),
    ResourceType("", "v1", "events", "Event", True, ("ev",), (), _EVENT_FIELDS),
    ResourceType("", "v1", "secrets", "Secret", True, (), (), frozenset({"type"})),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
    ResourceType("apps", "v1", "deployments", "Deployment", True, ("deploy",), ("status",),
                 tracks_generation=True, categories=("all",)),
    ResourceType("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",), ("status",),
                 frozenset({"status.replicas"}), tracks_generation=True, categories=("all",)),
    ResourceType("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",), ("status",),
                 tracks_generation=True, categories=("all",)),
    ResourceType("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",), ("status",),
                 tracks_generation=True, categories=("all",)),
    ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("pdb",),
                 ("status",), tracks_generation=True),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
)
# fmt: on


class Catalogue:
    """Lookup of the served kinds by URL parts and by ``apiVersion``/``kind``."""

    def __init__(self, types: tuple[ResourceType, ...] = BUILTIN_TYPES) -> None:
        self.types = types
        self._by_path = {(t.group, t.version, t.plural): t for t in types}
        self._by_kind = {(t.api_version, t.kind): t for t in types}
        self._groups: dict[str, list[str]] = {}
        for t in types:
            versions = self._groups.setdefault(t.group, [])
            if t.version not in versions:
                versions.append(t.version)

    def find(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_path.get((group, version, plural))

    def for_kind(self, api_version: str, kind: str) -> ResourceType | None:
        return self._by_kind.get((api_version, kind))

    def has_group_version(self, group: str, version: str) -> bool:
        return version in self._groups.get(group, ())

    def has_group(self, group: str) -> bool:
        return group in self._groups

    # --- discovery documents (legacy, unaggregated: clients fall back to these) ----------------

    def api_versions(self, server_address: str) -> dict[str, Any]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
            ],
        }

    def api_group(self, group: str) -> dict[str, Any]:
        versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in self._groups[group]]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": versions,
            "preferredVersion": versions[0],
        }

    def api_group_list(self) -> dict[str, Any]:
        groups = [self.api_group(g) for g in self._groups if g]
        for g in groups:
            del g["kind"], g["apiVersion"]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def api_resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources: list[dict[str, Any]] = []
        for t in self.types:
            if (t.group, t.version) != (group, version):
                continue
            entry: dict[str, Any] = {
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": list(_ALL_VERBS),
            }
            if t.short_names:
                entry["shortNames"] = list(t.short_names)
            if t.categories:
                entry["categories"] = list(t.categories)
            resources.append(entry)
            for sub in t.subresources:
                if sub == "eviction":
                    # kubectl drain uses the Eviction API only when discovery advertises it,
                    # with the group and version of the Eviction kind.
                    resources.append(
                        {
                            "name": f"{t.plural}/eviction",
                            "singularName": "",
                            "namespaced": t.namespaced,
                            "group": "policy",
                            "version": "v1",
                            "kind": "Eviction",
                            "verbs": ["create"],
                        }
                    )
                else:
                    resources.append(
                        {
                            "name": f"{t.plural}/{sub}",
                            "singularName": "",
                            "namespaced": t.namespaced,
                            "kind": t.kind,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
        # The core group's groupVersion is "v1", not "/v1" (kubectl mis-resolves kinds otherwise).
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    # --- OpenAPI v3: only what kubectl reads to decide on server-side field validation -------

    def openapi_index(self) -> dict[str, Any]:
        paths = {}
        for group, versions in self._groups.items():
            for version in versions:
                key = f"apis/{group}/{version}" if group else f"api/{version}"
                paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash=spotguard-sim"}
        return {"paths": paths}

    def openapi_group_version(self, group: str, version: str) -> dict[str, Any]:
        """One PATCH operation per kind that declares the ``fieldValidation`` query parameter.

        kubectl looks for it to learn that the server validates fields itself; without it
        ``kubectl create -f`` wants the full schema to validate client-side.
        """
        paths: dict[str, Any] = {}
        for t in self.types:
            if (t.group, t.version) != (group, version):
                continue
            path = t.base_path("{namespace}" if t.namespaced else None) + "/{name}"
            paths[path] = {
                "patch": {
                    "operationId": f"patch{t.kind}",
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {
                        "group": t.group,
                        "version": t.version,
                        "kind": t.kind,
                    },
                    "parameters": [
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": {"description": "OK"}},
                }
            }
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes (spotguard emulator)", "version": "v1.37.1"},
            "paths": paths,
            "components": {},
        }


SERVER_VERSION = {
    "major": "1",
    "minor": "37",
    "emulationMajor": "1",
    "emulationMinor": "37",
    "gitVersion": "v1.37.1+spotguard-sim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
