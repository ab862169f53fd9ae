"""`make demo` runs `spotguard demo`; this runs it the same way, with a shorter notice."""

from __future__ import annotations

import subprocess
import sys


def test_demo_shows_a_preemption_from_notice_to_completion() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spotguard", "demo", "--notice", "3", "--speedup", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "notice seen: preempt" in out
    assert "now started" in out
    assert "(completed)" in out
    assert out.rstrip().endswith("demo: preemption seen from notice to completion")
    assert result.stderr == ""  # nothing went wrong, so nothing was logged
