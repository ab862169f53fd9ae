"""Injected faults of the local Service Bus broker: what goes wrong, for which requests, how often.

A fault replaces the broker's normal answer; a rejected or detached send is not stored (a delayed
one is). Faults are checked in the order they were added; the first that matches applies.

- ``refuse`` (connections): the TCP connection is closed as soon as it is accepted. The SDK 7.15
  then leaks its socket (a ResourceWarning when it is collected).
- ``close_connection`` (connections): the AMQP connection is opened, then closed with
  ``condition`` (default ``amqp:connection:forced``); the SDK reconnects.
- ``reject_send`` (sends): the outcome is ``rejected`` with ``condition`` (default
  ``com.microsoft:server-busy``, which the SDK retries) and ``description``.
- ``delay_send`` (sends): the message is stored, its outcome (``accepted``) sent after ``delay``
  seconds: a lost acknowledgement when the client gives up first.
- ``detach_send`` (sends): the sender link is detached with ``condition`` (default
  ``amqp:link:detach-forced``); the SDK re-attaches and sends again.
- ``reject_token`` (``$cbs`` put-token): answered with ``status`` (default 401).

A fault applies to the next ``count`` matching requests (default 1), or to every matching request
for ``seconds`` after it was added; ``entity`` limits it to one entity (sends; put-token by the
token's audience).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final


class FaultKind(enum.StrEnum):
    REFUSE = "refuse"
    CLOSE_CONNECTION = "close_connection"
    REJECT_SEND = "reject_send"
    DELAY_SEND = "delay_send"
    DETACH_SEND = "detach_send"
    REJECT_TOKEN = "reject_token"  # noqa: S105 - the name of a fault, not a secret


_DEFAULT_CONDITION: Final = {
    FaultKind.CLOSE_CONNECTION: "amqp:connection:forced",
    FaultKind.REJECT_SEND: "com.microsoft:server-busy",
    FaultKind.DETACH_SEND: "amqp:link:detach-forced",
}
_FIELDS: Final = (
    "kind",
    "count",
    "seconds",
    "entity",
    "condition",
    "description",
    "delay",
    "status",
)


@dataclass(frozen=True, slots=True)
class Fault:
    """See the module docstring."""

    kind: FaultKind
    count: int | None = None
    seconds: float | None = None
    entity: str | None = None
    condition: str | None = None
    description: str = "injected by the local Service Bus broker"
    delay: float = 0.0
    status: int = 401

    def __post_init__(self) -> None:
        if self.count is not None and self.count < 1:
            raise ValueError("count must be at least 1")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError("seconds must be positive")
        if self.count is not None and self.seconds is not None:
            raise ValueError("give count or seconds, not both")
        if self.kind is FaultKind.DELAY_SEND and self.delay <= 0:
            raise ValueError("a delay_send fault needs delay > 0")
        if self.kind is FaultKind.REJECT_TOKEN and not 300 <= self.status <= 599:
            raise ValueError("a reject_token status must be an error status (300-599)")

    @property
    def error_condition(self) -> str:
        return self.condition or _DEFAULT_CONDITION.get(self.kind, "amqp:internal-error")

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> Fault:
        unknown = set(spec) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        if "kind" not in spec:
            raise ValueError(f"a fault needs a kind: one of {', '.join(FaultKind)}")
        fields = dict(spec)
        fields["kind"] = FaultKind(fields["kind"])
        if fields.get("entity"):
            fields["entity"] = str(fields["entity"]).lower()
        return cls(**fields)


@dataclass(slots=True)
class _Active:
    fault: Fault
    added: float
    used: int = 0


@dataclass(slots=True)
class FaultQueue:
    """Faults in the order they were added; ``take`` finds and consumes the one that applies."""

    now: Callable[[], float]
    _faults: list[_Active] = field(default_factory=list)

    def add(self, fault: Fault) -> None:
        self._faults.append(_Active(fault, self.now()))

    def clear(self) -> None:
        self._faults.clear()

    def __len__(self) -> int:
        return len(self._faults)

    def take(self, kinds: frozenset[FaultKind], entity: str | None = None) -> Fault | None:
        now = self.now()
        self._faults = [a for a in self._faults if not self._spent(a, now)]
        for active in self._faults:
            fault = active.fault
            if fault.kind not in kinds:
                continue
            if fault.entity is not None and fault.entity != entity:
                continue
            active.used += 1
            return fault
        return None

    @staticmethod
    def _spent(active: _Active, now: float) -> bool:
        fault = active.fault
        if fault.seconds is not None:
            return now - active.added >= fault.seconds
        return active.used >= (fault.count or 1)


SEND_FAULTS: Final = frozenset({FaultKind.REJECT_SEND, FaultKind.DELAY_SEND, FaultKind.DETACH_SEND})
