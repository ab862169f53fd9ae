"""config/alertmanager.yaml: valid for the real amtool, routes every alert of the rule files by
severity, groups per node, and inhibits only with alerts that exist."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.monitoring import ALERTMANAGER_CONFIG, alerting_rules, run, tool

RECEIVER = {"page": "oncall", "ticket": "team-channel", "info": "team-channel"}
ALERTS = {rule["alert"]: rule["labels"]["severity"] for rule in alerting_rules()}
CONFIG: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
# Labels every node alert carries (DESIGN.md, Contracts -> Metrics): rule and direct alerts alike.
NODE = ["cluster=prod", "nodepool=spot", "node=aks-spot-12345678-vmss000003"]


@pytest.fixture(scope="module")
def amtool() -> str:
    return tool("amtool", "prometheus-alertmanager")


def route(amtool: str, *labels: str, verify: str | None = None) -> tuple[int, str]:
    """``amtool config routes test --tree``: exit code and output (matched routes + receiver)."""
    flags = [f"--verify.receivers={verify}"] if verify else []
    result = run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        "--tree",
        *flags,
        *labels,
    )
    return result.returncode, result.stdout


def test_amtool_check_config(amtool: str) -> None:
    result = run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(("alertname", "severity"), sorted(ALERTS.items()))
def test_every_alert_goes_to_its_severitys_receiver(
    amtool: str, alertname: str, severity: str
) -> None:
    expected = RECEIVER[severity]
    labels = [f"alertname={alertname}", f"severity={severity}", *NODE]
    code, out = route(amtool, *labels, verify=expected)
    assert code == 0, out
    assert out.strip().splitlines()[-1] == expected


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        # the agent's direct alerts carry exactly alertname, severity, cluster, nodepool, node
        (["alertname=SpotguardPreemptionImminent", "severity=info", *NODE], "team-channel"),
        (["alertname=SpotguardDeadlineMissed", "severity=page", *NODE], "oncall"),
        # a spotguard alert someone wrote without severity lands somewhere visible
        (["alertname=SpotguardSomethingNew", *NODE], "team-channel"),
    ],
)
def test_direct_and_unlabelled_alerts(amtool: str, labels: list[str], receiver: str) -> None:
    code, out = route(amtool, *labels, verify=receiver)
    assert code == 0, out


def test_a_wrong_receiver_is_reported(amtool: str) -> None:
    """--verify.receivers fails on a mismatch (so the green cases above mean something)."""
    labels = ["alertname=SpotguardDrainFailed", "severity=page", *NODE]
    code, _ = route(amtool, *labels, verify="team-channel")
    assert code != 0


@pytest.mark.parametrize("alertname", ["SpotguardImdsBlind", "SpotguardAgentAbsent"])
def test_pool_wide_pages_take_the_per_pool_route(amtool: str, alertname: str) -> None:
    code, out = route(amtool, f"alertname={alertname}", "severity=page", *NODE, verify="oncall")
    assert code == 0, out
    assert alertname in out.split("Matching routes:")[1], out


def _spotguard_route() -> dict[str, Any]:
    (spotguard,) = [
        r for r in CONFIG["route"]["routes"] if 'alertname=~"Spotguard.+"' in r["matchers"]
    ]
    return spotguard


def test_node_alerts_are_grouped_per_node() -> None:
    spotguard = _spotguard_route()
    # No alertname: a rule alert and a direct alert for a node make one notification.
    assert spotguard["group_by"] == ["cluster", "nodepool", "node"]
    pool_wide = [r for r in spotguard["routes"] if "group_by" in r]
    assert [r["group_by"] for r in pool_wide] == [["alertname", "cluster", "nodepool"]]


def _names(matchers: list[str]) -> set[str]:
    """Alert names a list of matchers such as ['alertname=~"A|B"'] selects."""
    names: set[str] = set()
    for matcher in matchers:
        m = re.fullmatch(r'alertname(=~?)"?([^"]*)"?', matcher)
        if m:
            names.update(m.group(2).split("|"))
    return names


@pytest.mark.parametrize("rule", CONFIG["inhibit_rules"], ids=lambda r: str(r["target_matchers"]))
def test_inhibitions_name_existing_alerts_and_labels(rule: dict[str, Any]) -> None:
    sources, targets = _names(rule["source_matchers"]), _names(rule["target_matchers"])
    assert sources, rule
    assert targets, rule
    assert sources | targets <= set(ALERTS), sorted((sources | targets) - set(ALERTS))
    assert not sources & targets
    assert set(rule["equal"]) <= {"cluster", "nodepool", "node"}
    assert "node" in rule["equal"]  # never across nodes


def test_receivers_are_placeholders() -> None:
    urls = [hook["url"] for receiver in CONFIG["receivers"] for hook in receiver["webhook_configs"]]
    assert {r["name"] for r in CONFIG["receivers"]} == set(RECEIVER.values())
    for url in urls:
        host = urlsplit(url).hostname or ""
        assert host == "127.0.0.1" or host.endswith(".invalid"), url
