"""Test-wide set-up: the loopback-only network guard, for this process and every child."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_GUARD_DIR = Path(__file__).parent / "netguard"
sys.path.insert(0, str(_GUARD_DIR))
import tests_netguard  # noqa: E402

tests_netguard.install()
# Child processes (the simulators, the real `spotguard` commands) load it through sitecustomize.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(_GUARD_DIR), os.environ.get("PYTHONPATH", "")) if p
)
# Proxies must never be used for loopback traffic (and IMDS must bypass proxies anyway).
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


# RBAC from behaviour: tests/deploy/test_rbac.py compares deploy/'s RBAC with the API requests
# the e2e tests recorded (tests/rbac_recorder.py), so it runs after every other test.
RBAC_TEST = "tests/deploy/test_rbac.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid.startswith(RBAC_TEST + "::"))  # stable: order kept
