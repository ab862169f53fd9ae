"""The table ``spotguard demo`` ends with, and its verdict: was the node drained in time?"""

from __future__ import annotations

from typing import TextIO

from spotguard.demo_agent_log import print_tail, worth_showing
from spotguard.demo_observed import Observed


def _at(t: float | None) -> str:
    return "-" if t is None else f"{t:.1f} s"


def print_summary(out: TextIO, seen: Observed, *, deadline_t: float, not_before_t: float) -> int:
    """Prints the summary; 0 when every pod that had to move was gone by the deadline, else 1."""
    moving = seen.moving()
    gone = [p for p in moving if p.gone_t is not None]
    arrived = sum(1 for p in seen.pods.values() if p.arrived)
    deleted = sum(1 for p in gone if p.key in seen.deleted)
    evicted = sum(1 for p in gone if p.key in seen.evicted and p.key not in seen.deleted)
    empty_t = seen.empty_t()
    in_time = empty_t is not None and empty_t <= deadline_t
    rows: list[tuple[str, str]] = [
        ("pods on the node at the notice", str(len(seen.pods) - arrived)),
        ("  evicted", str(evicted)),
        ("  deleted after PDB refusals", str(deleted)),
        ("  gone otherwise", str(len(gone) - evicted - deleted)),
        ("  left in place (DaemonSet pods)", str(len(seen.pods) - len(moving))),
        ("  still on the node", str(len(moving) - len(gone))),
        ("pods scheduled onto the node during the drain", str(arrived)),
        ("PDB refusals, retried", str(sum(seen.pdb_refusals.values()))),
        ("notice to seen by the agent", _at(seen.seen_t)),
        ("notice to node cordoned", _at(seen.cordoned_t)),
        ("notice to every pod asked to leave", _at(seen.all_asked_t())),
        ("notice to node empty", _at(empty_t)),
        ("deadline (NotBefore - safety margin)", _at(deadline_t)),
        ("NotBefore", _at(not_before_t)),
        ("margin (deadline - node empty)", "-" if empty_t is None else _at(deadline_t - empty_t)),
    ]
    if seen.agent_margin is not None:
        rows.append(("margin, as the agent measured it", _at(seen.agent_margin)))
    rows.append(("agent warnings and errors logged", str(seen.agent_warnings)))
    width = max(len(label) for label, _ in rows) + 2
    out.write("\nsummary\n")
    for label, value in rows:
        out.write(f"  {label:<{width}}{value:>8}\n")
    if in_time:
        out.write("\nresult: drained in time\n")
    else:
        print_tail(out, [line for line in seen.agent_lines if worth_showing(line)])
        out.write("\nresult: NOT drained in time\n")
    out.flush()
    return 0 if in_time else 1
