"""The REST semantics of the emulated apiserver: one method per Kubernetes verb.

Transport-free: takes a parsed :class:`RequestInfo`, the query and the decoded body, and returns
a :class:`Reply` or raises :class:`ApiError`. Watches are in ``kube_watch``; HTTP, faults and
the request log in ``cluster``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from spotguard.clock import Clock
from spotguard.sim.kube_controllers import finish_deletion, random_suffix
from spotguard.sim.kube_disruption import decide_eviction, evicted, pdb_selects, terminating
from spotguard.sim.kube_errors import (
    STALE,
    ApiError,
    already_exists,
    bad_request,
    conflict,
    invalid,
    method_not_allowed,
    not_found,
    unknown_resource,
)
from spotguard.sim.kube_patch import APPLY_PATCH, PatchError, PatchFormatError, apply_patch
from spotguard.sim.kube_paths import RequestInfo
from spotguard.sim.kube_resources import Catalogue, ResourceType
from spotguard.sim.kube_selectors import (
    SelectorError,
    compile_filter,
    parse_field_selector,
    parse_label_selector,
)
from spotguard.sim.kube_store import ObjectStore, Stored, k8s_time
from spotguard.sim.kube_validation import (
    default_pod_spec,
    prepare_for_create,
    validate,
    validate_pod_update,
)

_JSON = {"Content-Type": "application/json"}
_NAMESPACE_MISMATCH = (
    "the namespace of the provided object does not match the namespace sent on the request"
)


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(_JSON))


def json_reply(status: int, obj: Any) -> Reply:
    return Reply(status, json.dumps(obj, separators=(",", ":")).encode())


def object_filter(
    rtype: ResourceType, query: Mapping[str, str]
) -> Callable[[Mapping[str, Any]], bool]:
    try:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), rtype.selectable_fields)
    except SelectorError as exc:
        raise bad_request(str(exc)) from None
    return compile_filter(labels, fields)


def _dry_run(query: Mapping[str, str], options: Mapping[str, Any] | None = None) -> bool:
    values = [query.get("dryRun", ""), *((options or {}).get("dryRun") or ())]
    for value in values:
        if value and value != "All":
            raise bad_request(f'unsupported dry run value "{value}"; supported: "All"')
    return any(values)


class KubeApi:
    def __init__(self, *, store: ObjectStore, catalogue: Catalogue, clock: Clock) -> None:
        self.store = store
        self.catalogue = catalogue
        self._clock = clock
        found = {(t.group, t.plural): t for t in catalogue.types}
        self.namespaces = found[("", "namespaces")]
        self.pods = found[("", "pods")]
        self.pdbs = found[("policy", "poddisruptionbudgets")]

    # --- routing --------------------------------------------------------------------------

    def resource(self, info: RequestInfo) -> ResourceType:
        rtype = self.catalogue.find(info.group, info.version, info.resource or "")
        if rtype is None:
            raise unknown_resource()
        if info.subresource is not None and info.subresource not in rtype.subresources:
            raise unknown_resource()
        if not rtype.namespaced and info.namespace and rtype is not self.namespaces:
            raise unknown_resource()
        if rtype.namespaced and not info.namespace and info.verb not in ("list", "watch"):
            raise unknown_resource()
        return rtype

    def handle(
        self, info: RequestInfo, query: Mapping[str, str], body: Any, content_type: str
    ) -> Reply:
        rtype = self.resource(info)
        verb, sub = info.verb, info.subresource
        if sub == "eviction":
            if verb != "create":
                raise method_not_allowed()
            return self.evict(rtype, info, query, body)
        if verb == "create" and info.name is not None:
            raise method_not_allowed()
        handlers: dict[str, Callable[[], Reply]] = {
            "get": lambda: self.get(rtype, info),
            "list": lambda: self.list(rtype, info, query),
            "create": lambda: self.create(rtype, info, query, body),
            "update": lambda: self.update(rtype, info, query, body),
            "patch": lambda: self.patch(rtype, info, query, body, content_type),
            "delete": lambda: self.delete(rtype, info, query, body),
            "deletecollection": lambda: self.delete_collection(rtype, info, query, body),
        }
        handler = handlers.get(verb)
        if handler is None or (sub == "status" and verb not in ("get", "update", "patch")):
            raise method_not_allowed()
        return handler()

    def _existing(self, rtype: ResourceType, info: RequestInfo) -> Stored:
        stored = self.store.get(rtype, info.namespace, info.name or "")
        if stored is None:
            raise not_found(rtype, info.name or "")
        return stored

    # --- reads ----------------------------------------------------------------------------

    def get(self, rtype: ResourceType, info: RequestInfo) -> Reply:
        return Reply(200, self._existing(rtype, info).raw)

    def list(self, rtype: ResourceType, info: RequestInfo, query: Mapping[str, str]) -> Reply:
        accept = object_filter(rtype, query)
        namespace = info.namespace if rtype.namespaced else None
        rv = self.store.resource_version
        start: tuple[str, str] | None = None
        if query.get("continue"):
            rv, start = _decode_continue(query["continue"])
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise bad_request(f"invalid limit {query.get('limit')!r}") from None
        items: list[Stored] = []
        remaining = 0
        for stored in self.store.items(rtype, namespace):
            if start is not None and (stored.namespace, stored.name) <= start:
                continue
            if not accept(stored.obj):
                continue
            if limit and len(items) >= limit:
                remaining += 1
                continue
            items.append(stored)
        meta: dict[str, Any] = {"resourceVersion": str(self.store.resource_version)}
        if remaining:
            last = items[-1]
            meta["continue"] = _encode_continue(rv, (last.namespace, last.name))
            meta["remainingItemCount"] = remaining
        head = json.dumps(
            {"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta},
            separators=(",", ":"),
        ).encode()
        return Reply(200, head[:-1] + b',"items":[' + b",".join(s.raw for s in items) + b"]}")

    # --- writes ---------------------------------------------------------------------------

    def create(
        self, rtype: ResourceType, info: RequestInfo, query: Mapping[str, str], body: Any
    ) -> Reply:
        obj = self._body_object(rtype, body)
        meta = dict(obj.get("metadata") or {})
        if rtype.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and body_ns != info.namespace:
                raise bad_request(_NAMESPACE_MISMATCH)
            meta["namespace"] = info.namespace
            if self.store.get(self.namespaces, None, info.namespace or "") is None:
                raise not_found(self.namespaces, info.namespace or "")
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{random_suffix()}"
        if meta.get("resourceVersion"):
            raise ApiError(500, "resourceVersion should not be set on objects to be created")
        for system in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            meta.pop(system, None)
        obj = prepare_for_create(rtype, {**obj, "metadata": meta})
        causes = validate(rtype, obj)
        if causes:
            raise invalid(rtype, str(meta.get("name") or ""), causes)
        if _dry_run(query):
            if self.store.get(rtype, info.namespace, meta["name"]) is not None:
                raise already_exists(rtype, meta["name"])
            preview = {
                **obj,
                "metadata": {**obj["metadata"], "creationTimestamp": self.store.now()},
            }
            return json_reply(201, preview)
        return Reply(201, self.store.create(rtype, obj).raw)

    def update(
        self, rtype: ResourceType, info: RequestInfo, query: Mapping[str, str], body: Any
    ) -> Reply:
        old = self._existing(rtype, info)
        obj = self._body_object(rtype, body)
        meta = obj.get("metadata") or {}
        if meta.get("name") != info.name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match "
                f"the name on the URL ({info.name})"
            )
        if rtype.namespaced and meta.get("namespace") not in (None, "", info.namespace):
            raise bad_request(_NAMESPACE_MISMATCH)
        rv = meta.get("resourceVersion")
        if rv and rv != old.meta["resourceVersion"]:
            raise conflict(rtype, old.name, STALE)
        return self._commit(rtype, old, obj, info.subresource, query)

    def patch(
        self,
        rtype: ResourceType,
        info: RequestInfo,
        query: Mapping[str, str],
        body: Any,
        content_type: str,
    ) -> Reply:
        old = self._existing(rtype, info)
        if content_type.split(";", 1)[0].strip().lower() == APPLY_PATCH:
            raise ApiError(415, "server-side apply is not supported by the spotguard emulator")
        try:
            patched = apply_patch(content_type, old.obj, body)
        except PatchFormatError as exc:
            raise bad_request(str(exc)) from None
        except PatchError as exc:
            raise ApiError(422, str(exc)) from None
        except LookupError:
            raise ApiError(
                415,
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, "
                "application/apply-patch+yaml, application/strategic-merge-patch+json",
            ) from None
        if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
            raise ApiError(422, "the patch produced an object without metadata")
        rv = patched["metadata"].get("resourceVersion")
        if rv and rv != old.meta["resourceVersion"]:
            raise conflict(rtype, old.name, STALE)
        return self._commit(rtype, old, patched, info.subresource, query)

    def _commit(
        self,
        rtype: ResourceType,
        old: Stored,
        obj: dict[str, Any],
        sub: str | None,
        query: Mapping[str, str],
    ) -> Reply:
        if sub == "status":
            new = {**old.obj}
            if "status" in obj:
                new["status"] = obj["status"]
        else:
            new = {k: v for k, v in obj.items() if k != "status"} if rtype.has_status else dict(obj)
            if rtype.has_status and "status" in old.obj:
                new["status"] = old.obj["status"]
            # Deletion state belongs to the server; finalizers and the rest to the client.
            meta = {
                k: v
                for k, v in (new.get("metadata") or {}).items()
                if k not in ("deletionTimestamp", "deletionGracePeriodSeconds")
            }
            for kept in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                if kept in old.meta:
                    meta[kept] = old.meta[kept]
            new["metadata"] = meta
        if rtype is self.pods and sub != "status":
            new["spec"] = default_pod_spec(new.get("spec") or {})  # defaulting precedes validation
        causes = validate(rtype, new)
        if rtype is self.pods and sub != "status":
            causes += validate_pod_update(old.obj, new)
        if causes:
            raise invalid(rtype, old.name, causes)
        if _dry_run(query):
            return json_reply(200, new)
        stored = self.store.replace(rtype, old, new)
        meta = stored.meta
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not meta.get("deletionGracePeriodSeconds")
        ):
            self.store.remove(rtype, stored)
        return Reply(200, stored.raw)

    # --- deletion -------------------------------------------------------------------------

    def delete(
        self, rtype: ResourceType, info: RequestInfo, query: Mapping[str, str], body: Any
    ) -> Reply:
        old = self._existing(rtype, info)
        options = body if isinstance(body, dict) else {}
        dry_run = _dry_run(query, options)
        _check_preconditions(rtype, old, options)
        grace = _grace_period(query, options)
        if rtype is self.pods:
            return self._delete_pod(old, grace, dry_run)
        if dry_run:
            return Reply(200, old.raw)
        if rtype is self.namespaces:
            self._empty_namespace(old.name)
        if old.meta.get("finalizers"):
            if not terminating(old.obj):
                finish_deletion(self.store, rtype, old)
            current = self.store.get(rtype, info.namespace, old.name)
            return Reply(200, (current or old).raw)
        self.store.remove(rtype, old)
        details: dict[str, Any] = {
            "name": old.name,
            "kind": rtype.plural,
            "uid": old.meta.get("uid"),
        }
        if rtype.group:
            details["group"] = rtype.group
        return json_reply(
            200,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            },
        )

    def _delete_pod(self, old: Stored, grace: int | None, dry_run: bool) -> Reply:
        spec, phase = old.obj.get("spec") or {}, (old.obj.get("status") or {}).get("phase")
        if grace is None:
            grace = int(spec.get("terminationGracePeriodSeconds", 30))
        grace = max(grace, 0)
        if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
            grace = 0  # nothing runs it: no kubelet will confirm
        current = old.meta.get("deletionGracePeriodSeconds")
        if terminating(old.obj) and current is not None and grace >= current:
            return Reply(200, old.raw)  # already going, at least as fast
        if dry_run:
            return Reply(200, old.raw)
        if grace == 0:
            finish_deletion(self.store, self.pods, old)
            return Reply(200, (self.store.get(self.pods, old.namespace, old.name) or old).raw)
        deadline = self._clock.now() + timedelta(seconds=grace)
        meta = {
            **old.meta,
            "deletionTimestamp": k8s_time(deadline),
            "deletionGracePeriodSeconds": grace,
        }
        return Reply(200, self.store.replace(self.pods, old, {**old.obj, "metadata": meta}).raw)

    def _empty_namespace(self, namespace: str) -> None:
        """No Terminating phase: the namespace's objects go at once (documented gap)."""
        # Controllers first, so that none of them replaces a pod that is going away.
        for rtype in sorted(self.catalogue.types, key=lambda t: t.group != "apps"):
            if rtype.namespaced:
                for stored in list(self.store.items(rtype, namespace)):
                    self.store.remove(rtype, stored)

    def delete_collection(
        self, rtype: ResourceType, info: RequestInfo, query: Mapping[str, str], body: Any
    ) -> Reply:
        accept = object_filter(rtype, query)
        options = body if isinstance(body, dict) else {}
        dry_run = _dry_run(query, options)
        grace = _grace_period(query, options)
        namespace = info.namespace if rtype.namespaced else None
        deleted: list[bytes] = []
        for stored in list(self.store.items(rtype, namespace)):
            if not accept(stored.obj):
                continue
            if rtype is self.pods:
                deleted.append(self._delete_pod(stored, grace, dry_run).body)
            elif not dry_run:
                sub = RequestInfo(
                    path="", verb="delete", namespace=stored.namespace or None, name=stored.name
                )
                self.delete(rtype, sub, query, body)
                deleted.append(stored.raw)
        head = json.dumps(
            {
                "kind": rtype.list_kind,
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
            },
            separators=(",", ":"),
        ).encode()
        return Reply(200, head[:-1] + b',"items":[' + b",".join(deleted) + b"]}")

    # --- eviction -------------------------------------------------------------------------

    def evict(
        self, rtype: ResourceType, info: RequestInfo, query: Mapping[str, str], body: Any
    ) -> Reply:
        pod = self._existing(rtype, info)
        if not isinstance(body, dict) or body.get("kind") not in (None, "Eviction"):
            raise bad_request("the body of an eviction must be an Eviction object")
        meta = body.get("metadata") or {}
        if meta.get("name") and meta["name"] != info.name:
            raise bad_request("name in URL does not match name in Eviction object")
        if meta.get("namespace") and meta["namespace"] != info.namespace:
            raise bad_request("namespace in URL does not match namespace in Eviction object")
        options = body.get("deleteOptions") or {}
        dry_run = _dry_run(query, options)
        _check_preconditions(rtype, pod, options)
        budgets = [
            p for p in self.store.items(self.pdbs, pod.namespace) if pdb_selects(p.obj, pod.obj)
        ]
        decision = decide_eviction(pod.obj, [b.obj for b in budgets], now=self.store.now())
        if dry_run:
            return json_reply(201, evicted())
        if decision.pdb_status is not None:
            budget = next(b for b in budgets if b.name == decision.pdb_name)
            self.store.replace(self.pdbs, budget, {**budget.obj, "status": decision.pdb_status})
        self._delete_pod(pod, _grace_period({}, options), dry_run=False)
        return json_reply(201, evicted())

    # --- helpers --------------------------------------------------------------------------

    def _body_object(self, rtype: ResourceType, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version and api_version != rtype.api_version:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match "
                f"the expected API version ({rtype.api_version})"
            )
        if kind and kind != rtype.kind:
            raise bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})"
            )
        if not isinstance(body.get("metadata", {}), dict):
            raise bad_request("metadata must be an object")
        return {**body, "metadata": dict(body.get("metadata") or {})}


def _grace_period(query: Mapping[str, str], options: Mapping[str, Any]) -> int | None:
    raw = query.get("gracePeriodSeconds")
    if raw is None:
        value = options.get("gracePeriodSeconds")
        return None if value is None else int(value)
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"invalid gracePeriodSeconds {raw!r}") from None


def _check_preconditions(rtype: ResourceType, stored: Stored, options: Mapping[str, Any]) -> None:
    pre = options.get("preconditions") or {}
    uid, rv = pre.get("uid"), pre.get("resourceVersion")
    if uid and uid != stored.meta.get("uid"):
        raise conflict(
            rtype,
            stored.name,
            f"Precondition failed: UID in precondition: {uid}, "
            f"UID in object meta: {stored.meta.get('uid')}",
        )
    if rv and rv != stored.meta.get("resourceVersion"):
        raise conflict(
            rtype,
            stored.name,
            f"Precondition failed: ResourceVersion in precondition: {rv}, "
            f"ResourceVersion in object meta: {stored.meta.get('resourceVersion')}",
        )


def _encode_continue(rv: int, start: tuple[str, str]) -> str:
    token = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(start)})
    return base64.urlsafe_b64encode(token.encode()).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        namespace, name = data["start"]
        return int(data["rv"]), (str(namespace), str(name))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise bad_request("continue key is not valid") from None
