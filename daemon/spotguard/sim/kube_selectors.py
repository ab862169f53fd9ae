"""Label and field selectors, as the apiserver parses and applies them.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x,y)``, ``a``, ``!a``,
``a>1``, ``a<1``, comma-separated (AND), and ``metav1.LabelSelector`` (matchLabels and
matchExpressions, used by PodDisruptionBudgets). Field selectors: ``=``, ``==``, ``!=`` on the
per-resource whitelist; anything else is a 400, as on a real cluster.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!":
                return not present
            case "gt" | "lt":
                try:
                    have, want = int(value or ""), int(self.values[0])
                except ValueError:
                    return False
                return have > want if self.op == "gt" else have < want
        raise AssertionError(self.op)  # pragma: no cover


LabelSelector = tuple[Requirement, ...]


def _check_key(key: str) -> str:
    if not key or len(key.rpartition("/")[2]) > 63 or not _LABEL_KEY.match(key):
        raise SelectorError(f"invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise SelectorError(f"invalid label value {value!r}")
    return value


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError("unbalanced parenthesis")
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    if depth:
        raise SelectorError("unbalanced parenthesis")
    terms.append(text[start:])
    return [t.strip() for t in terms]


_SET_TERM = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def parse_label_selector(text: str) -> LabelSelector:
    text = text.strip()
    if not text:
        return ()
    requirements = []
    for term in _split_terms(text):
        if not term:
            raise SelectorError("empty requirement")
        if m := _SET_TERM.match(term):
            values = tuple(_check_value(v.strip()) for v in m["values"].split(","))
            requirements.append(Requirement(_check_key(m["key"]), m["op"], values))
        elif term.startswith("!"):
            requirements.append(Requirement(_check_key(term[1:].strip()), "!"))
        elif m := re.match(r"^([^=!<>\s]+)\s*(==|=|!=|>|<)\s*(.*)$", term):
            key, op, value = m.groups()
            op = {"==": "=", ">": "gt", "<": "lt"}.get(op, op)
            if op in ("gt", "lt") and not re.fullmatch(r"-?\d+", value.strip()):
                raise SelectorError(f"{value!r} is not an integer")
            requirements.append(Requirement(_check_key(key), op, (_check_value(value.strip()),)))
        elif " " not in term:
            requirements.append(Requirement(_check_key(term), "exists"))
        else:
            raise SelectorError(f"unable to parse requirement {term!r}")
    return tuple(requirements)


def from_label_selector_object(selector: Mapping[str, Any] | None) -> LabelSelector | None:
    """``metav1.LabelSelector`` to requirements. ``None`` (no selector) matches nothing."""
    if selector is None:
        return None
    requirements = [
        Requirement(k, "=", (str(v),)) for k, v in (selector.get("matchLabels") or {}).items()
    ]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in selector.get("matchExpressions") or ():
        op = ops.get(expr.get("operator", ""))
        if op is None:
            raise SelectorError(f"{expr.get('operator')!r} is not a valid label selector operator")
        requirements.append(Requirement(expr["key"], op, tuple(expr.get("values") or ())))
    return tuple(requirements)


def labels_match(selector: LabelSelector | None, labels: Mapping[str, str] | None) -> bool:
    if selector is None:
        return False
    labels = labels or {}
    return all(r.matches(labels) for r in selector)


# --- field selectors -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    value: str
    negate: bool
    get: Callable[[Mapping[str, Any]], str] = dataclass_field(compare=False, repr=False)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (self.get(obj) == self.value) != self.negate


FieldSelector = tuple[FieldRequirement, ...]


def parse_field_selector(text: str, allowed: frozenset[str]) -> FieldSelector:
    text = text.strip()
    if not text:
        return ()
    requirements = []
    for term in text.split(","):
        for op in ("!=", "==", "="):
            key, sep, value = term.partition(op)
            if sep:
                break
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        key = key.strip()
        if key not in allowed:
            raise SelectorError(f'field label not supported: "{key}"')
        requirements.append(FieldRequirement(key, value.strip(), op == "!=", field_getter(key)))
    return tuple(requirements)


# The apiserver's field sets render missing booleans as "false", other missing fields as "".
_BOOLEAN_FIELDS = frozenset({"spec.unschedulable", "spec.hostNetwork"})


def _render(value: Any, missing: str) -> str:
    if value is None:
        return missing
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def field_getter(path: str) -> Callable[[Mapping[str, Any]], str]:
    """The field's value as the apiserver's field set renders it (compiled once per selector)."""
    if path == "source":  # events: source.component, as the apiserver's event field set says
        return lambda obj: str((obj.get("source") or {}).get("component") or "")
    if path == "status.podIPs":
        return lambda obj: str((((obj.get("status") or {}).get("podIPs") or [{}])[0]).get("ip", ""))
    missing = "false" if path in _BOOLEAN_FIELDS else ""
    parts = tuple(path.split("."))

    def get(obj: Mapping[str, Any]) -> str:
        node: Any = obj
        for part in parts:
            if not isinstance(node, dict):
                return missing
            node = node.get(part)
        return _render(node, missing)

    return get


def fields_match(selector: FieldSelector, obj: Mapping[str, Any]) -> bool:
    return all(requirement.matches(obj) for requirement in selector)


def compile_filter(
    labels: LabelSelector, fields: FieldSelector
) -> Callable[[Mapping[str, Any]], bool]:
    """One predicate over whole objects, for lists and watches."""
    if not labels and not fields:
        return lambda _obj: True
    if not labels:
        return lambda obj: fields_match(fields, obj)

    def accept(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return labels_match(labels, meta.get("labels")) and fields_match(fields, obj)

    return accept
