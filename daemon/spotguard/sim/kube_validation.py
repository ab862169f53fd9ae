"""The slice of apiserver defaulting and validation the emulator applies.

Not schema validation: only the rules an agent bug is likely to hit (names, label syntax, taint
effects, required pod fields, immutable pod spec, PDB spec) and the defaults clients read back
(pod restart policy, grace period, phase). Each error is a ``(field, reason, message)`` cause of
a 422, as the apiserver reports it.
"""

from __future__ import annotations

import re
from typing import Any

from spotguard.sim.kube_resources import ResourceType

Cause = tuple[str, str, str]

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Fields of a pod's spec that an update may change (everything else is immutable).
_MUTABLE_POD_SPEC = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")


def name_causes(rtype: ResourceType, name: str) -> list[Cause]:
    label_only = rtype.plural in ("namespaces",)
    pattern, limit = (_LABEL, 63) if label_only else (_SUBDOMAIN, 253)
    if not name:
        return [
            (
                "metadata.name",
                "FieldValueRequired",
                "Required value: name or generateName is required",
            )
        ]
    if len(name) > limit or not pattern.match(name):
        kind = "RFC 1123 label" if label_only else "RFC 1123 subdomain"
        return [
            (
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": a lowercase {kind} must consist of lower case '
                "alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character",
            )
        ]
    return []


def _meta_causes(meta: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    for key, value in (meta.get("labels") or {}).items():
        if not _QUALIFIED.match(key) or len(key.rpartition("/")[2]) > 63:
            causes.append(
                (
                    "metadata.labels",
                    "FieldValueInvalid",
                    f'Invalid value: "{key}": name part must be valid',
                )
            )
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(
                (
                    "metadata.labels",
                    "FieldValueInvalid",
                    f'Invalid value: "{value}": a valid label must be an empty string or '
                    "consist of alphanumeric characters, '-', '_' or '.'",
                )
            )
    for key, value in (meta.get("annotations") or {}).items():
        if not _QUALIFIED.match(key):
            causes.append(
                (
                    "metadata.annotations",
                    "FieldValueInvalid",
                    f'Invalid value: "{key}": name part must be valid',
                )
            )
        if not isinstance(value, str):
            causes.append(
                (
                    "metadata.annotations",
                    "FieldValueInvalid",
                    f"Invalid value: annotation {key} must be a string",
                )
            )
    return causes


def _pod_causes(spec: dict[str, Any], prefix: str = "spec") -> list[Cause]:
    causes: list[Cause] = []
    containers = spec.get("containers")
    if not containers:
        causes.append((f"{prefix}.containers", "FieldValueRequired", "Required value"))
    for i, c in enumerate(containers or ()):
        if not c.get("name"):
            causes.append(
                (f"{prefix}.containers[{i}].name", "FieldValueRequired", "Required value")
            )
        if not c.get("image"):
            causes.append(
                (f"{prefix}.containers[{i}].image", "FieldValueRequired", "Required value")
            )
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or grace < 0):
        causes.append(
            (
                f"{prefix}.terminationGracePeriodSeconds",
                "FieldValueInvalid",
                "must be greater than or equal to 0",
            )
        )
    return causes


def _taint_causes(spec: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    for i, taint in enumerate(spec.get("taints") or ()):
        key = taint.get("key") or ""
        if not key or not _QUALIFIED.match(key):
            causes.append(
                (
                    f"spec.taints[{i}].key",
                    "FieldValueInvalid",
                    f'Invalid value: "{key}": a qualified name',
                )
            )
        if taint.get("effect") not in _TAINT_EFFECTS:
            causes.append(
                (
                    f"spec.taints[{i}].effect",
                    "FieldValueNotSupported",
                    f'Unsupported value: "{taint.get("effect")}": supported values: '
                    + ", ".join(f'"{e}"' for e in _TAINT_EFFECTS),
                )
            )
        value = taint.get("value") or ""
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(
                (f"spec.taints[{i}].value", "FieldValueInvalid", f'Invalid value: "{value}"')
            )
    return causes


def _pdb_causes(spec: dict[str, Any]) -> list[Cause]:
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        return [("spec", "FieldValueInvalid", "minAvailable and maxUnavailable cannot be both set")]
    return []


def validate(rtype: ResourceType, obj: dict[str, Any]) -> list[Cause]:
    meta = obj.get("metadata") or {}
    causes = name_causes(rtype, str(meta.get("name") or "")) + _meta_causes(meta)
    raw_spec = obj.get("spec")
    spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
    if rtype.kind == "Pod":
        causes += _pod_causes(spec)
    elif rtype.kind == "Node":
        causes += _taint_causes(spec)
    elif rtype.kind == "PodDisruptionBudget":
        causes += _pdb_causes(spec)
    elif rtype.kind in ("ReplicaSet", "Deployment", "DaemonSet", "StatefulSet"):
        template = spec.get("template") or {}
        causes += _pod_causes(template.get("spec") or {}, "spec.template.spec")
        if not spec.get("selector"):
            causes.append(("spec.selector", "FieldValueRequired", "Required value"))
    return causes


def validate_pod_update(old: dict[str, Any], new: dict[str, Any]) -> list[Cause]:
    """Pods are immutable apart from images, a few fields, and added tolerations."""
    old_spec, new_spec = dict(old.get("spec") or {}), dict(new.get("spec") or {})
    for field in _MUTABLE_POD_SPEC:
        old_spec.pop(field, None)
        new_spec.pop(field, None)
    for key in ("containers", "initContainers"):
        old_spec[key] = [{**c, "image": None} for c in old_spec.get(key) or ()]
        new_spec[key] = [{**c, "image": None} for c in new_spec.get(key) or ()]
    if old_spec != new_spec:
        return [
            (
                "spec",
                "FieldValueForbidden",
                "Forbidden: pod updates may not change fields other than "
                "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing "
                "tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 "
                "if it was previously negative)",
            )
        ]
    return []


def default_pod_spec(spec: dict[str, Any]) -> dict[str, Any]:
    spec = dict(spec)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("priority", 0)
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec["containers"] = [
        {
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
            "resources": {},
            **c,
        }
        for c in spec.get("containers") or ()
    ]
    return spec


def prepare_for_create(rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """Defaults and the status reset the apiserver's create strategies apply."""
    obj = dict(obj)
    kind = rtype.kind
    if kind == "Pod":
        obj["spec"] = default_pod_spec(obj.get("spec") or {})
        obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj["spec"])}
    elif kind in ("ReplicaSet", "Deployment", "DaemonSet", "StatefulSet", "PodDisruptionBudget"):
        obj["status"] = {}
        if kind != "PodDisruptionBudget":
            spec = dict(obj.get("spec") or {})
            if kind != "DaemonSet":
                spec.setdefault("replicas", 1)
            template = dict(spec.get("template") or {})
            template["spec"] = default_pod_spec(template.get("spec") or {})
            spec["template"] = template
            obj["spec"] = spec
    elif kind == "Namespace":
        obj["spec"] = {"finalizers": ["kubernetes"], **(obj.get("spec") or {})}
        obj["status"] = {"phase": "Active"}
        meta = dict(obj.get("metadata") or {})
        meta["labels"] = {
            **(meta.get("labels") or {}),
            "kubernetes.io/metadata.name": meta.get("name", ""),
        }
        obj["metadata"] = meta
    elif kind == "Secret":
        obj.setdefault("type", "Opaque")
    elif kind == "Node":
        obj.setdefault("spec", {})
    return obj


def _qos_class(spec: dict[str, Any]) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers") or ()]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        r.get("limits")
        and all(r.get("requests", r["limits"]).get(k) == v for k, v in r["limits"].items())
        for r in resources
    )
    return "Guaranteed" if guaranteed else "Burstable"
