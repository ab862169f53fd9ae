"""Scripted faults: answer matching requests with an error, late, or not at all.

A fault never changes cluster state: a request it answers with a status (429 with
``Retry-After``, 5xx, ...) or drops is not executed. A fault with only a ``delay`` holds the
request and then executes it, like a slow apiserver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spotguard.sim.kube_paths import RequestInfo

_MATCH_KEYS = ("verb", "group", "resource", "subresource", "namespace", "name", "user_agent")


@dataclass(slots=True)
class FaultRule:
    id: int
    match: dict[str, str]
    status: int | None = None
    retry_after: int | None = None
    message: str | None = None
    delay: float = 0.0
    drop: bool = False
    #: matching requests to let through before the fault starts applying
    after: int = 0
    #: how many requests it applies to; None = until removed
    times: int | None = None
    hits: int = field(default=0)
    seen: int = field(default=0)

    def matches(self, info: RequestInfo, user_agent: str) -> bool:
        for key, want in self.match.items():
            if key == "user_agent":
                if want not in user_agent:
                    return False
            elif (getattr(info, key) or "") != want:
                return False
        return True

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "match": self.match,
            "status": self.status,
            "retry_after": self.retry_after,
            "message": self.message,
            "delay": self.delay,
            "drop": self.drop,
            "after": self.after,
            "times": self.times,
            "hits": self.hits,
        }


def parse_rule(rule_id: int, spec: dict[str, Any]) -> FaultRule:
    """Build a rule from its JSON form; ValueError names what is wrong."""
    unknown = set(spec) - {
        "match",
        "status",
        "retry_after",
        "message",
        "delay",
        "drop",
        "after",
        "times",
    }
    if unknown:
        raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
    match = spec.get("match") or {}
    if not isinstance(match, dict) or set(match) - set(_MATCH_KEYS):
        raise ValueError(f"match may use only: {', '.join(_MATCH_KEYS)}")
    status = spec.get("status")
    if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
        raise ValueError("status must be an HTTP error code (400-599)")
    delay = float(spec.get("delay") or 0.0)
    drop = bool(spec.get("drop", False))
    if status is None and not drop and delay <= 0:
        raise ValueError("a fault needs a status, drop: true, or a delay")
    times = spec.get("times")
    if times is not None and (not isinstance(times, int) or times < 1):
        raise ValueError("times must be a positive integer")
    retry_after = spec.get("retry_after")
    return FaultRule(
        id=rule_id,
        match={k: str(v) for k, v in match.items()},
        status=status,
        retry_after=None if retry_after is None else int(retry_after),
        message=spec.get("message"),
        delay=max(delay, 0.0),
        drop=drop,
        after=int(spec.get("after") or 0),
        times=times,
    )


class FaultTable:
    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._next_id = 1

    def add(self, spec: dict[str, Any]) -> FaultRule:
        rule = parse_rule(self._next_id, spec)
        self._next_id += 1
        self._rules.append(rule)
        return rule

    def remove(self, rule_id: int) -> bool:
        before = len(self._rules)
        self._rules = [r for r in self._rules if r.id != rule_id]
        return len(self._rules) != before

    def clear(self) -> None:
        self._rules.clear()

    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def take(self, info: RequestInfo, user_agent: str) -> FaultRule | None:
        """The first live rule for this request, counting it as used."""
        for rule in self._rules:
            if rule.exhausted or not rule.matches(info, user_agent):
                continue
            rule.seen += 1
            if rule.seen <= rule.after:
                continue
            rule.hits += 1
            return rule
        return None
