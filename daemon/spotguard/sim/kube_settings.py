"""Knobs of the emulated cluster, adjustable while it runs (``PATCH /_sim/settings``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

#: Pod annotations that override the timing knobs for one pod (emulator only).
READY_AFTER_ANNOTATION = "sim.spotguard.io/ready-after"
STOP_AFTER_ANNOTATION = "sim.spotguard.io/stop-after"


@dataclass(slots=True)
class EmulatorSettings:
    #: seconds from binding until a pod is Running and Ready (the kubelet stand-in)
    ready_after: float = 0.5
    #: seconds a pod's containers take to exit after SIGTERM; None = the whole grace period
    stop_after: float | None = None
    #: run the kubelet, scheduler, ReplicaSet and disruption controller stand-ins
    controllers: bool = True
    #: recompute PodDisruptionBudget status (off: tests set status.disruptionsAllowed by hand)
    disruption_controller: bool = True
    #: server-side cap on a watch's duration, seconds (real apiservers: 30-60 min)
    watch_timeout_cap: float = 1800.0
    #: seconds between BOOKMARK events when a watch asks for them
    bookmark_interval: float = 60.0

    def update(self, values: dict[str, Any]) -> None:
        """Apply a partial update, all or nothing; unknown keys and wrong types raise ValueError."""
        problems = [p for p in (self._problem(k, v) for k, v in values.items()) if p]
        if problems:
            raise ValueError("; ".join(problems))
        for key, value in values.items():
            setattr(self, key, value)

    def _problem(self, key: str, value: Any) -> str | None:
        known = {f.name for f in fields(self)}
        if key not in known:
            return f"unknown setting {key!r}; known: {', '.join(sorted(known))}"
        if isinstance(getattr(self, key), bool):
            return None if isinstance(value, bool) else f"{key} must be true or false"
        if value is None and key == "stop_after":
            return None
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            return f"{key} must be a number of seconds >= 0"
        return None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seconds_annotation(obj: dict[str, Any], annotation: str) -> float | None:
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(annotation)
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is None or value >= 0 else None
