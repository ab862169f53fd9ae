"""Shared pieces for the tests of the monitoring files: paths, the alert rules as data, and the
Debian tools (promtool, amtool) they run — missing tools fail the test, they never skip it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS_DIR = ROOT / "dashboards" / "alerts"
RULE_FILES = sorted(ALERTS_DIR.glob("*.rules.yml"))
RULE_TESTS = sorted((ALERTS_DIR / "tests").glob("*.test.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_BASE_URL = "https://github.com/spotguard/spotguard/blob/main/docs/runbooks/"
ALERTMANAGER_CONFIG = ROOT / "config" / "alertmanager.yaml"
SEVERITIES = {"page", "ticket", "info"}


def tool(name: str, package: str) -> str:
    """The path of a Debian tool; a clear failure (not a skip) when it is not installed."""
    path = shutil.which(name)
    assert path, f"{name} not found: `make setup` installs it (Debian package {package})"
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


def alerting_rules() -> list[dict[str, Any]]:
    """Every alerting rule of every rule file, as written."""
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(rule for rule in group["rules"] if "alert" in rule)
    return rules
