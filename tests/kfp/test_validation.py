"""spot_ready's argument checks and the retry window, in the main virtualenv: they run before kfp
is imported, and ``import spotguard.kfp`` never imports kfp."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest

from spotguard.kfp import parse_duration, retry_window, spot_ready

GOOD: dict[str, Any] = {"expected_runtime": "1h", "checkpoint_root": "abfs://ckpt"}


def test_import_does_not_import_kfp() -> None:
    probe = (
        "import sys, spotguard.kfp; print(sorted(m for m in sys.modules if m.startswith('kfp')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_kfp_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kfp", None)  # import kfp raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'spotguard\[kfp\]'"):
        spot_ready(object(), **GOOD)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (timedelta(minutes=5), 300),
        (90, 90),
        (0.2, 1),
        ("45s", 45),
        ("30m", 1800),
        ("2h", 7200),
        ("1.5h", 5400),
        ("1d", 86400),
        (" 10 m ", 600),
    ],
)
def test_durations(value: Any, seconds: int) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5", "5 min", "-1s", "1w", "h"])
def test_bad_duration_strings(value: str) -> None:
    with pytest.raises(ValueError, match="expected_runtime"):
        parse_duration(value, name="expected_runtime")


def test_retry_window_covers_every_wait_and_attempt() -> None:
    # The seed's 5 retries 5 minutes apart, for a 1 h step: 25 min of waits + 6 h.
    assert retry_window(expected_runtime="1h") == 5 * 300 + 6 * 3600
    # KFP's default factor 2: 5 + 10 + 20 + 40 + 80 min of waits alone exceed KFP's 3600 s default.
    assert retry_window(expected_runtime=0, backoff="5m", backoff_factor=2) == 155 * 60 > 3600


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"expected_runtime": 0}, ValueError, "expected_runtime must be more than 0"),
        ({"expected_runtime": "soon"}, ValueError, "expected_runtime='soon'"),
        ({"expected_runtime": True}, TypeError, "not a bool"),
        ({"expected_runtime": -5}, ValueError, "0 or more"),
        ({"retries": 0}, ValueError, "retries=0 must be a whole number of 1 or more"),
        ({"retries": 2.5}, ValueError, "retries=2.5"),
        ({"backoff_factor": 1.5}, ValueError, "backoff_factor=1.5 must be a whole number"),
        ({"backoff_factor": 0}, ValueError, "backoff_factor=0"),
        ({"backoff": "-1m"}, ValueError, "backoff="),
        (
            {"backoff_max_duration": "30m"},
            ValueError,
            r"backoff_max_duration='30m' \(1800 s\) is shorter than the 5 waits plus one "
            r"expected runtime \(5100 s\)",
        ),
        ({"checkpoint_root": None}, ValueError, "checkpoint_root is required"),
        ({"checkpoint_root": "ckpt/rel"}, ValueError, "absolute path"),
        ({"checkpoint_root": "abfs://c/{{x}}"}, ValueError, "no spaces"),
        ({"checkpoint_root": "abfs://c/a b"}, ValueError, "no spaces"),
        ({"checkpoint_root": "/"}, ValueError, "checkpoint_root=''"),
        ({"checkpoint_root": 7}, TypeError, "checkpoint_root must be a string"),
        ({"checkpoint": False}, ValueError, "checkpoint_root is given but checkpoint=False"),
        ({"checkpoint": "yes"}, TypeError, "checkpoint must be True or False"),
        ({"required_affinity": 1}, TypeError, "required_affinity must be True or False"),
        ({"port": 0}, ValueError, "port=0 must be a TCP port"),
        ({"port": True}, ValueError, "port=True"),
        ({"path": "checkpoint"}, ValueError, "must start with '/'"),
    ],
)
def test_bad_arguments(change: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        spot_ready(object(), **{**GOOD, **change})
