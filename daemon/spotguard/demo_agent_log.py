"""The agent's JSON log lines (its stderr) as ``spotguard demo`` shows them to people."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

WARNING_LEVELS = frozenset({"warning", "error", "critical"})
#: Lines shown when the agent fails to start or the node is not drained in time.
AGENT_LOG_TAIL = 15
#: Context every agent line carries; left out when a line is shown to people.
_CONTEXT = frozenset({"command", "node", "vm_name", "event_id", "kind", "timestamp", "level"})


def parse(text: str) -> dict[str, Any] | None:
    """The line's JSON object; None for anything else (a traceback, say)."""
    try:
        line = json.loads(text)
    except json.JSONDecodeError:
        return None
    return line if isinstance(line, dict) else None


def brief(line: Mapping[str, Any]) -> str:
    """``warning pod_delete_after_pdb pod=ml-0/web-0-1 reason=...`` from a JSON log line."""
    fields = " ".join(
        f"{k}={v}" for k, v in line.items() if k not in _CONTEXT and k != "event" and v is not None
    )
    return f"{line.get('level', '')} {line.get('event', '')} {fields}"[:300]


def worth_showing(text: str) -> bool:
    """A warning or an error, or not a JSON line at all (a traceback)."""
    line = parse(text)
    return line is None or line.get("level") in WARNING_LEVELS


def print_tail(out: TextIO, lines: Iterable[str]) -> None:
    out.write("the agent's last log lines:\n")
    for text in list(lines)[-AGENT_LOG_TAIL:]:
        line = parse(text)
        out.write(f"  | {brief(line) if line is not None else text.rstrip()[:300]}\n")
