"""Scripted events (``--scenario``, ``ImdsSimulator.play``, ``POST /control/scenario``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from spotguard.model import Kind
from spotguard.sim.imds_model import TYPE_DEFAULTS


@dataclass(frozen=True, slots=True)
class Scenario:
    """A scripted event: it appears a short (sped-up) delay after the scenario starts."""

    name: str
    summary: str
    kind: Kind
    notice: float | None = None  # seconds until NotBefore (real); None: the type's minimum
    duration: int | None = None  # DurationInSeconds; None: the type's default
    started_for: float | None = None  # None: the type's default
    other_vm: bool = False  # list only another VM of the scale set, not the target
    cancel_after: float | None = None  # seconds after it appears (sped up)

    @property
    def notice_seconds(self) -> float:
        return TYPE_DEFAULTS[self.kind].notice if self.notice is None else self.notice


SCENARIOS: Final[Mapping[str, Scenario]] = MappingProxyType(
    {
        s.name: s
        for s in (
            Scenario("preempt", "Preempt for this VM, NotBefore in 30 s", Kind.PREEMPT),
            Scenario("preempt-short", "Preempt for this VM, NotBefore in 5 s", Kind.PREEMPT, 5),
            Scenario("reboot", "Reboot in 15 min, 10 s impact", Kind.REBOOT, None, 10, 10),
            Scenario("redeploy", "Redeploy in 10 min", Kind.REDEPLOY),
            Scenario("freeze", "Freeze in 15 min, DurationInSeconds 5", Kind.FREEZE),
            Scenario("terminate", "Terminate in 5 min (user scale-in)", Kind.TERMINATE),
            Scenario(
                "other-vm",
                "Preempt listing only another VM of the scale set (NotBefore in 30 s)",
                Kind.PREEMPT,
                other_vm=True,
            ),
            Scenario(
                "cancelled",
                "Reboot in 15 min, cancelled 5 s after it appears",
                Kind.REBOOT,
                cancel_after=5,
            ),
        )
    }
)


def scenario_named(name: str) -> Scenario:
    """``SCENARIOS[name]``; ValueError naming the known scenarios if there is none."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
