"""Wall-clock time, injected.

Intervals and timeouts use the event loop's monotonic clock. Wall time is needed only to turn
IMDS ``NotBefore`` into a deadline and to stamp records; it comes from a ``Clock`` so tests and
the simulator can control it. This module is the only place that reads the system's wall clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current wall-clock time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def rfc3339(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z`` suffix and millisecond precision, or None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
