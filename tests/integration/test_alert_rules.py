"""The alert rules in dashboards/alerts/: valid for the real promtool, unit-tested with firing and
non-firing cases for every alert, and each alert linked to a runbook that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.monitoring import (
    RULE_FILES,
    RULE_TESTS,
    RUNBOOK_BASE_URL,
    RUNBOOKS,
    SEVERITIES,
    alerting_rules,
    run,
    tool,
)

ALERTS = {rule["alert"]: rule for rule in alerting_rules()}


@pytest.fixture(scope="module")
def promtool() -> str:
    return tool("promtool", "prometheus")


def test_there_are_rules_and_rule_tests() -> None:
    assert RULE_FILES, "no dashboards/alerts/*.rules.yml"
    assert RULE_TESTS, "no dashboards/alerts/tests/*.test.yml"
    assert len(ALERTS) >= 8


def test_promtool_check_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules(promtool: str) -> None:
    result = run(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_promtool_test_rules_fails_on_a_wrong_expectation(promtool: str, tmp_path: Path) -> None:
    """The harness notices a failing rule test (so the green one above means something)."""
    wrong = {
        "rule_files": [str(p) for p in RULE_FILES],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {"series": 'spotguard_imds_blind{node="n", pod="p"}', "values": "0x20"}
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "4m",
                        "alertname": "SpotguardImdsBlind",
                        "exp_alerts": [{"exp_labels": {"severity": "page", "node": "n"}}],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "wrong.test.yml"
    path.write_text(yaml.safe_dump(wrong))
    result = run(promtool, "test", "rules", str(path))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def _count_cases() -> dict[str, dict[str, int]]:
    """alertname -> how many firing and non-firing checks the rule tests make."""
    cases: dict[str, dict[str, int]] = {}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for check in test.get("alert_rule_test", []):
                kind = "firing" if check.get("exp_alerts") else "silent"
                counts = cases.setdefault(check["alertname"], {"firing": 0, "silent": 0})
                counts[kind] += 1
    return cases


CASES = _count_cases()


@pytest.mark.parametrize("alertname", sorted(ALERTS))
def test_every_alert_has_firing_and_silent_cases(alertname: str) -> None:
    counts = CASES.get(alertname, {"firing": 0, "silent": 0})
    assert counts["firing"] > 0, f"{alertname}: no test case where it fires"
    assert counts["silent"] > 0, f"{alertname}: no test case where it stays silent"


def test_rule_tests_name_only_existing_alerts() -> None:
    assert set(CASES) <= set(ALERTS)


@pytest.mark.parametrize("alertname", sorted(ALERTS))
def test_every_alert_has_labels_annotations_and_a_runbook(alertname: str) -> None:
    rule = ALERTS[alertname]
    assert re.fullmatch(r"Spotguard[A-Z][A-Za-z]+", alertname)
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE_URL}{alertname}.md"
    runbook = RUNBOOKS / f"{alertname}.md"
    assert runbook.is_file(), f"missing runbook {runbook}"
    text = runbook.read_text()
    assert text.startswith(f"# {alertname}\n")
    for section in ("## What it means", "## What to check", "## What to do"):
        assert section in text, f"{runbook.name}: no {section!r}"


def test_no_runbook_without_an_alert() -> None:
    extra = {p.stem for p in RUNBOOKS.glob("*.md")} - set(ALERTS)
    assert not extra, f"runbooks for alerts that do not exist: {sorted(extra)}"
