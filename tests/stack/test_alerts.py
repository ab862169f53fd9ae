"""From a preemption on a real agent to the notification Alertmanager sends, on the real stack.

Each test reads one scenario's outcome (scenarios.py: what is driven and why it is timed that
way); the scenarios run concurrently on their own nodes. The measured times, from the injection
of the notice, are printed (``pytest -s`` or ``-rP`` shows them).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.agent_harness import node_name
from tests.monitoring import RUNBOOK_BASE_URL, tool
from tests.stack.conftest import Scenarios
from tests.stack.scenarios import Outcome
from tests.stack.servers import Notification
from tests.stack.stack import (
    BYSTANDER,
    CLUSTER,
    DIRECT,
    MISSED,
    NODEPOOL,
    RULE_ONLY,
    SCRAPE_INTERVAL,
    UNCONFIRMED,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.slow]


def only_alert(sent: Notification) -> dict[str, Any]:
    assert len(sent.alerts) == 1, sent.summary()
    alert: dict[str, Any] = sent.alerts[0]
    return alert


def node_alert_labels(alertname: str, severity: str, index: int) -> dict[str, str]:
    """Exactly the labels of the agent's direct alerts (DESIGN.md, Contracts -> Metrics)."""
    return {
        "alertname": alertname,
        "severity": severity,
        "cluster": CLUSTER,
        "nodepool": NODEPOOL,
        "node": node_name(index),
    }


def scraped(samples: list[tuple[float, float]]) -> list[float]:
    """When the scrapes happened that saw the counter (or gauge) at 1 or more."""
    return [at for at, value in samples if value >= 1]


def assert_seen_by_one_scrape(out: Outcome) -> float:
    """The notice was in exactly one scrape, the planned one, and the VM went right after."""
    assert out.notice is not None
    assert out.killed_at is not None
    seen = scraped(out.facts["notices"])
    assert len(seen) == 1, f"scrapes that saw the notice: {out.facts['notices']}"
    assert abs(seen[0] - out.notice.last_scrape) < 0.5, (seen, out.notice)
    assert seen[0] < out.killed_at < seen[0] + SCRAPE_INTERVAL
    return seen[0]


def assert_page(sent: Notification, alertname: str, index: int) -> None:
    assert sent.receiver == "oncall"
    assert sent.payload["receiver"] == "oncall"
    assert sent.payload["status"] == "firing"
    assert sent.alertnames == [alertname], sent.summary()
    alert = only_alert(sent)
    assert alert["labels"] == node_alert_labels(alertname, "page", index)
    assert alert["annotations"]["runbook_url"] == f"{RUNBOOK_BASE_URL}{alertname}.md"
    # Grouped by node: the group is exactly the node's cluster, pool and name.
    assert sent.payload["groupLabels"] == {
        "cluster": CLUSTER,
        "nodepool": NODEPOOL,
        "node": node_name(index),
    }


async def test_without_direct_alerts_the_rule_alert_reaches_its_receiver(
    scenarios: Scenarios,
) -> None:
    """Killed right after the one scrape that saw the notice: the rule alert still fires (its
    window outlives the series) and reaches the team channel; nothing pages, since that scrape
    also saw the drain end in time."""
    out = await scenarios.outcome("rule_only")
    print(out.report())
    seen = assert_seen_by_one_scrape(out)
    assert scraped(out.facts["drained"]) == [seen], out.facts["drained"]

    assert len(out.notifications) == 1, [n.summary() for n in out.notifications]
    sent = out.notifications[0]
    assert sent.receiver == "team-channel"
    assert sent.payload["status"] == "firing"
    alert = only_alert(sent)
    assert alert["labels"] == node_alert_labels("SpotguardPreemptionImminent", "info", RULE_ONLY)
    assert "/graph" in alert["generatorURL"], "not the rule's alert"
    assert alert["annotations"]["runbook_url"] == (
        f"{RUNBOOK_BASE_URL}SpotguardPreemptionImminent.md"
    )

    pages = [a for a in out.facts["alerts_once_gone"] if a["labels"]["severity"] == "page"]
    assert pages == [], "the drain was reported in time: nothing may page"


async def test_with_direct_alerts_one_notification_arrives_not_two(scenarios: Scenarios) -> None:
    """The agent's own alert arrives first and is notified; the rule alert of the same name and
    labels reaches Alertmanager after the VM is gone and merges into it: no second notification.
    """
    out = await scenarios.outcome("direct_and_rule")
    print(out.report())
    assert_seen_by_one_scrape(out)
    assert out.killed_at is not None

    assert len(out.notifications) == 1, [n.summary() for n in out.notifications]
    sent = out.notifications[0]
    assert sent.receiver == "team-channel"
    alert = only_alert(sent)
    labels = node_alert_labels("SpotguardPreemptionImminent", "info", DIRECT)
    assert alert["labels"] == labels
    assert "Sent by the agent itself" in alert["annotations"]["description"]
    assert sent.at < out.killed_at, "the direct alert is notified while the VM still runs"

    # The rule alert did arrive, with the same labels: one alert in Alertmanager, now carrying
    # the rule's fields (the younger alert's), and firing in Prometheus.
    [held] = out.facts["alertmanager_alerts"]
    assert held["labels"] == labels
    assert "/graph" in held["generatorURL"]
    firing = [
        a["labels"]
        for a in out.facts["prometheus_alerts"]
        if a["state"] == "firing" and a["labels"]["alertname"] == "SpotguardPreemptionImminent"
    ]
    assert firing == [labels]


async def test_a_missed_deadline_pages_on_call(scenarios: Scenarios) -> None:
    """A budget keeps one pod on the node and the policy may not delete it: the drain gives up on
    it (once waiting longer would not leave it its stop budget) and reports the deadline missed.
    The direct alerts cannot get through; the report is scraped before NotBefore.
    SpotguardDeadlineMissed pages on-call, and only it (the drain was partial, not failed, and
    its outcome was reported)."""
    out = await scenarios.outcome("missed_deadline")
    print(out.report())
    assert out.notice is not None
    assert out.killed_at is not None
    missed = scraped(out.facts["missed"])
    assert missed, f"the miss was never scraped: {out.facts['missed']}"
    assert missed[0] < out.killed_at
    assert scraped(out.facts["partial"]) == missed
    # The other pods left: the pipeline step checkpointed first (its endpoint was asked once).
    assert scraped(out.facts["checkpoints_saved"])
    [asked] = [r for r in out.facts["checkpoint_requests"] if r["event_id"] == out.notice.event_id]
    assert asked["node"] == node_name(MISSED)
    assert asked["kind"] == "preempt"
    # The agent tried to alert directly, and could not.
    assert scraped(out.facts["alert_errors"])

    pages = [n for n in out.notifications if n.receiver == "oncall"]
    assert pages, [n.summary() for n in out.notifications]
    for page in pages:
        assert_page(page, "SpotguardDeadlineMissed", MISSED)
    paging = {
        a["labels"]["alertname"]
        for a in out.facts["alerts_once_gone"]
        if a["labels"]["severity"] == "page"
    }
    assert paging == {"SpotguardDeadlineMissed"}


async def test_a_vm_gone_before_its_drain_was_reported_pages_on_call(
    scenarios: Scenarios,
) -> None:
    """The drain gave up at the deadline and the VM went at NotBefore, 2 s later, before a scrape
    saw the outcome: SpotguardDrainUnconfirmed pages on-call."""
    out = await scenarios.outcome("drain_unconfirmed")
    print(out.report())
    assert_seen_by_one_scrape(out)
    assert out.killed_at is not None
    assert out.facts["drains_seen"] == 0, "a drain outcome was scraped after all"
    # The drain ended (at the deadline, after the one scrape that saw the notice), unreported.
    ended = [line["_received"] for line in out.facts["incomplete"]]
    assert ended, "the drain never ended: the VM went while it still ran"
    assert out.notice is not None
    assert out.notice.last_scrape < ended[0] < out.killed_at

    pages = [n for n in out.notifications if n.receiver == "oncall"]
    assert pages, [n.summary() for n in out.notifications]
    assert_page(pages[0], "SpotguardDrainUnconfirmed", UNCONFIRMED)


async def test_an_imds_outage_is_seen_and_the_agent_recovers(scenarios: Scenarios) -> None:
    """The live series the dashboard's "now" panels need, and the blind rule on real series:
    blind scraped, SpotguardImdsBlind pending (it waits 2m before it fires), then recovery."""
    out = await scenarios.outcome("imds_outage")
    timings = ("blind_after", "pending_after", "recovered_after")
    print(
        f"{out.node}: IMDS failing from +0s, " + ", ".join(f"{k} +{out.facts[k]}s" for k in timings)
    )
    assert (out.facts["errors"] or 0) >= 1
    assert out.node == node_name(BYSTANDER)
    assert out.facts["blind_after"] < out.facts["pending_after"] < out.facts["recovered_after"]
    [blind] = out.facts["blind_alert"]
    assert blind["state"] == "pending"
    assert blind["labels"] == node_alert_labels("SpotguardImdsBlind", "page", BYSTANDER)
    assert out.notifications == [], "SpotguardImdsBlind waits 2m: nothing may be sent yet"


async def test_promtool_accepts_the_agents_metrics_endpoint(scenarios: Scenarios) -> None:
    """What the running agent serves on /metrics mid-notice (deadline gauge, observed
    histograms, node info), not only what its registry renders (test_metrics_promtool.py)."""
    out = await scenarios.outcome("missed_deadline")
    exposition: str = out.facts["exposition"]
    for name in (
        "spotguard_notice_deadline_timestamp_seconds",
        "spotguard_node_info",
        "spotguard_checkpoint_duration_seconds_bucket",
    ):
        assert name in exposition
    proc = await asyncio.create_subprocess_exec(
        tool("promtool", "prometheus"),
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate(exposition.encode())
    assert proc.returncode == 0, output.decode()
