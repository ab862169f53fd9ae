"""The three PATCH flavours the apiserver applies, chosen by Content-Type.

- JSON merge patch (RFC 7386, ``application/merge-patch+json``)
- JSON patch (RFC 6902, ``application/json-patch+json``)
- strategic merge patch (``application/strategic-merge-patch+json``): a subset that knows the
  merge keys of the built-in kinds served here. Lists without a merge strategy (``spec.taints``
  and ``spec.tolerations`` among them, as in Kubernetes) are replaced whole.

All functions are pure: the original object is never modified, unchanged subtrees are shared.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH, STRATEGIC_MERGE_PATCH)

_PRIMITIVE_SET = "<set>"
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
# Merge keys by the last one or two field names of a list's path (list indexes left out).
_MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("metadata", "ownerReferences"): "uid",
    ("metadata", "finalizers"): _PRIMITIVE_SET,
    ("spec", "volumes"): "name",
    ("spec", "imagePullSecrets"): "name",
    ("spec", "hostAliases"): "ip",
    ("spec", "podCIDRs"): _PRIMITIVE_SET,
    ("spec", "topologySpreadConstraints"): "topologyKey",
    ("spec", "resourceClaims"): "name",
    ("spec", "schedulingGates"): "name",
    ("spec", "ports"): "port",
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("status", "podIPs"): "ip",
    ("status", "hostIPs"): "ip",
}
for _list in _CONTAINER_LISTS:
    _MERGE_KEYS[("spec", _list)] = "name"
    _MERGE_KEYS[(_list, "env")] = "name"
    _MERGE_KEYS[(_list, "ports")] = "containerPort"
    _MERGE_KEYS[(_list, "volumeMounts")] = "mountPath"
    _MERGE_KEYS[(_list, "volumeDevices")] = "devicePath"


class PatchError(ValueError):
    """The patch could not be applied (422 in the apiserver)."""


class PatchFormatError(ValueError):
    """The patch document is malformed (400 in the apiserver)."""


def merge_key(path: tuple[str, ...]) -> str | None:
    return _MERGE_KEYS.get(path[-2:]) if len(path) >= 2 else None


# --- RFC 7386 ---------------------------------------------------------------------------------


def json_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


# --- strategic merge patch --------------------------------------------------------------------

_DELETE = object()


def strategic_merge_patch(original: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        raise PatchFormatError("a strategic merge patch must be a JSON object")
    result = _smp_map(original if isinstance(original, Mapping) else {}, patch, ())
    return {} if result is _DELETE else result


def _strip(value: Any) -> Any:
    """Drop patch directives from a value that replaces whatever was there."""
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _smp_map(original: Mapping[str, Any], patch: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return _strip(patch)
    if directive not in (None, "merge"):
        raise PatchError(f"unknown patch type: {directive!r}")
    result = dict(original)
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.partition("/")[2]
            doomed = set(map(_hashable, value or ()))
            kept = [v for v in result.get(field) or () if _hashable(v) not in doomed]
            result[field] = kept
            continue
        if key.startswith("$"):  # $patch, $setElementOrder/..., $retainKeys: order/retention only
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub = (*path, key)
        current = result.get(key)
        if isinstance(value, Mapping):
            merged = _smp_map(current if isinstance(current, Mapping) else {}, value, sub)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(current if isinstance(current, list) else [], value, sub)
        else:
            result[key] = value
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _hashable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else repr(value)


def _smp_list(original: list[Any], patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    key = merge_key(path)
    if key is None:
        return [_strip(v) for v in patch]
    if key == _PRIMITIVE_SET:
        seen = set(map(_hashable, original))
        merged = list(original)
        for v in patch:
            if _hashable(v) not in seen:
                seen.add(_hashable(v))
                merged.append(v)
        return merged
    if any(isinstance(item, Mapping) and item.get("$patch") == "replace" for item in patch):
        return [
            _strip(item) for item in patch if not (isinstance(item, Mapping) and "$patch" in item)
        ]
    result = list(original)
    for item in patch:
        if not isinstance(item, Mapping) or key not in item:
            raise PatchError(f"map: {item!r} does not contain declared merge key: {key}")
        index = next(
            (i for i, o in enumerate(result) if isinstance(o, Mapping) and o.get(key) == item[key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(_strip(item))
        else:
            merged = _smp_map(result[index], item, path)
            result[index] = merged
    return result


# --- RFC 6902 ---------------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchFormatError(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: Any, tokens: list[str], op: str) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        node = _child(node, token, op)
    return node, tokens[-1]


def _child(node: Any, token: str, op: str) -> Any:
    if isinstance(node, dict):
        if token not in node:
            raise PatchError(f"{op} operation does not apply: doc is missing path: {token}")
        return node[token]
    if isinstance(node, list):
        return node[_index(node, token, op, allow_end=False)]
    raise PatchError(f"{op} operation does not apply: {token} is not a container")


def _index(node: list[Any], part: str, op: str, *, allow_end: bool) -> int:
    if part == "-" and allow_end:
        return len(node)
    if not part.isdigit() or (part != "0" and part.startswith("0")):
        raise PatchError(f"{op} operation does not apply: invalid array index {part!r}")
    index = int(part)
    if index > len(node) or (index == len(node) and not allow_end):
        raise PatchError(f"{op} operation does not apply: array index {index} out of bounds")
    return index


def _get(doc: Any, tokens: list[str], op: str) -> Any:
    node = doc
    for token in tokens:
        node = _child(node, token, op)
    return node


def _remove(doc: Any, tokens: list[str], op: str) -> Any:
    if not tokens:
        raise PatchError(f"{op} operation does not apply: cannot remove the root")
    parent, last = _container(doc, tokens, op)
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{op} operation does not apply: doc is missing key: {last}")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, op, allow_end=False))
    raise PatchError(f"{op} operation does not apply: parent is not a container")


def _add(doc: Any, tokens: list[str], value: Any, op: str) -> Any:
    if not tokens:
        return value
    parent, last = _container(doc, tokens, op)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, op, allow_end=True), value)
    else:
        raise PatchError(f"{op} operation does not apply: parent is not a container")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchFormatError("a JSON patch must be a JSON array of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, Mapping) or "op" not in operation:
            raise PatchFormatError(f"invalid JSON patch operation {operation!r}")
        op = operation["op"]
        tokens = _pointer(operation.get("path"))
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchFormatError(f"{op} operation is missing 'value'")
        match op:
            case "add":
                doc = _add(doc, tokens, copy.deepcopy(operation["value"]), op)
            case "remove":
                _remove(doc, tokens, op)
            case "replace":
                if not tokens:
                    doc = copy.deepcopy(operation["value"])
                    continue
                _remove(doc, tokens, op)
                doc = _add(doc, tokens, copy.deepcopy(operation["value"]), op)
            case "move" | "copy":
                source = _pointer(operation.get("from"))
                if op == "move" and tokens[: len(source)] == source and tokens != source:
                    raise PatchError("move operation does not apply: cannot move into a child")
                value = (
                    _remove(doc, source, op)
                    if op == "move"
                    else copy.deepcopy(_get(doc, source, op))
                )
                doc = _add(doc, tokens, value, op)
            case "test":
                if _get(doc, tokens, op) != operation["value"]:
                    raise PatchError(
                        f"testing value {operation.get('path')} failed: value does not match"
                    )
            case _:
                raise PatchFormatError(f"unexpected kind of operation {op!r}")
    return doc


def apply_patch(content_type: str, original: Any, patch: Any) -> Any:
    """Dispatch on the media type (parameters such as ``; charset=utf-8`` are ignored)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == MERGE_PATCH:
        if not isinstance(patch, Mapping):
            raise PatchFormatError("a merge patch must be a JSON object")
        return json_merge_patch(original, patch)
    if media == JSON_PATCH:
        return json_patch(original, patch)
    if media == STRATEGIC_MERGE_PATCH:
        return strategic_merge_patch(original, patch)
    raise LookupError(media)
