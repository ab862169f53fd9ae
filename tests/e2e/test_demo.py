"""`make demo` runs `spotguard demo`; these run it the same way, with shorter notices."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

DEMO = [sys.executable, "-m", "spotguard", "demo"]


def _pids(out: str) -> list[int]:
    """The children's pids, as the demo's introduction lists them."""
    return [int(p) for p in re.findall(r"pid (\d+)\)", out)]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_demo_drains_the_node_in_time_and_exits_0() -> None:
    result = subprocess.run(
        [*DEMO, "--notice", "6"], capture_output=True, text=True, timeout=90, check=False
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert result.stderr == ""  # nothing went wrong, so nothing was logged
    for line in (
        "Azure schedules Preempt",
        "agent: notice seen",
        "node cordoned, tainted spotguard.io/preempt=",
        "evicted (grace ",
        "the node is empty",
        "agent: drained, ",
    ):
        assert line in out, line
    summary = out[out.index("\nsummary\n") :]
    assert re.search(r"pods on the node at the notice\s+22\n", summary), summary
    assert re.search(r"left in place \(DaemonSet pods\)\s+3\n", summary), summary
    assert re.search(r"still on the node\s+0\n", summary), summary
    assert re.search(r"scheduled onto the node during the drain\s+0\n", summary), summary
    margin = re.search(r"margin \(deadline - node empty\)\s+([\d.]+) s", summary)
    assert margin is not None, summary
    assert float(margin.group(1)) > 0
    assert out.rstrip().endswith("result: drained in time")
    assert all(_gone(pid) for pid in _pids(out))  # every child stopped


def test_demo_exits_1_when_the_notice_is_too_short_to_drain() -> None:
    # NotBefore 1-2 s away: the deadline (2 s before it) has passed before the agent sees it.
    result = subprocess.run(
        [*DEMO, "--notice", "1"], capture_output=True, text=True, timeout=90, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("result: NOT drained in time")
    assert "the agent's last log lines:" in result.stdout


def test_demo_stops_every_child_on_ctrl_c() -> None:
    # Only the demo gets SIGINT (not its process group, as a terminal's Ctrl-C would):
    # stopping the children is the demo's own job.
    proc = subprocess.Popen(
        [*DEMO, "--notice", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Azure schedules Preempt" in line or not line:
            break
    pids = _pids("".join(lines))
    assert len(pids) == 3, lines
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert all(_gone(pid) for pid in pids), pids
