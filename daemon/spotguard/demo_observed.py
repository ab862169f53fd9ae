"""What ``spotguard demo`` saw of the drain, in seconds since the Preempt was scheduled (t = 0)."""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field

from spotguard.demo_agent_log import AGENT_LOG_TAIL


@dataclass
class PodSeen:
    key: str  # namespace/name
    daemonset: bool
    asked_t: float | None = None
    grace: int | None = None
    gone_t: float | None = None
    #: scheduled onto the node after the notice (only possible while it is not cordoned)
    arrived: bool = False


@dataclass
class Observed:
    """Everything the summary needs, filled in as the timeline is recorded."""

    pods: dict[str, PodSeen] = field(default_factory=dict)  # by uid: at t = 0, and arrivals
    evicted: dict[str, float] = field(default_factory=dict)  # key -> t of the accepted eviction
    deleted: dict[str, float] = field(default_factory=dict)  # key -> t of the accepted delete
    pdb_refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    seen_t: float | None = None
    cordoned_t: float | None = None
    agent_margin: float | None = None
    agent_lines: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=AGENT_LOG_TAIL)
    )
    agent_warnings: int = 0

    def moving(self) -> list[PodSeen]:
        """The pods the drain must move: all but DaemonSet pods."""
        return [p for p in self.pods.values() if not p.daemonset]

    def empty_t(self) -> float | None:
        """When the last pod that must move was gone; None while one is left."""
        return self._all_by(lambda p: p.gone_t)

    def all_asked_t(self) -> float | None:
        """When the last pod that must move was asked to leave; None while one was not."""
        return self._all_by(lambda p: p.asked_t)

    def _all_by(self, t_of: Callable[[PodSeen], float | None]) -> float | None:
        times = [t_of(p) for p in self.moving()]
        done = [t for t in times if t is not None]
        return max(done) if done and len(done) == len(times) else None

    def how(self, key: str) -> str:
        if key in self.deleted:
            return "deleted after PDB refusals" if self.pdb_refusals[key] else "deleted"
        if key in self.evicted:
            return "evicted"
        return "asked to leave"
