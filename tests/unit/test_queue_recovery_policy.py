"""The recovery policy: pure decisions from the event, the node's facts and the time."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotguard.config import Taint, parse_taint
from spotguard.observability.metrics import RECOVERY_OUTCOMES
from spotguard.queue.events import EventKind, FleetEvent, parse_message
from spotguard.queue.recovery import (
    HISTORY_LIMIT,
    HistoryEntry,
    NodeFacts,
    Outcome,
    Plan,
    RecoveryRecord,
    Step,
    node_facts,
    parse_record,
    plan_eviction,
    plan_reconcile,
    render_record,
)

DATA = Path(__file__).parents[1] / "data" / "eventgrid"
EVENT = parse_message((DATA / "aks-spot-preempted-eventgrid.json").read_bytes())
OCCURRED = EVENT.occurred_at  # 2026-11-28T14:00:31.512Z
TAINT = parse_taint("node.kubernetes.io/out-of-service=nodeshutdown:NoExecute")
SPOT = {"key": "kubernetes.azure.com/scalesetpriority", "value": "spot", "effect": "NoSchedule"}


def facts(
    *,
    ready: bool | None = False,
    changed: datetime | None = OCCURRED + timedelta(seconds=40),
    taints: tuple[dict[str, str], ...] = (SPOT,),
    record: RecoveryRecord | None = None,
) -> NodeFacts:
    return NodeFacts(
        name="aks-spot-12345678-vmss000003",
        resource_version="7",
        provider_id="azure:///" + EVENT.resource_id,
        nodepool="spot",
        taints=taints,
        ready=ready,
        ready_changed=changed,
        record=record or RecoveryRecord(),
    )


def plan(node: NodeFacts, *, after: float, event: FleetEvent = EVENT) -> Plan:
    down_since = node.ready_changed or OCCURRED
    return plan_eviction(
        event, node, now=down_since + timedelta(seconds=after), not_ready_after=60, taint=TAINT
    )


def test_outcomes_are_the_metric_label_values() -> None:
    assert tuple(o.value for o in Outcome) == RECOVERY_OUTCOMES
    assert [o for o in Outcome if not o.final] == [Outcome.NOT_READY_YET]


def test_a_node_down_long_enough_gets_the_taint_and_the_record_in_one_plan() -> None:
    result = plan(facts(), after=61)
    assert result.outcome is Outcome.TAINTED
    assert result.taints is not None
    assert result.taints[0] == SPOT
    added = result.taints[1]
    assert (added["key"], added["value"], added["effect"]) == (
        "node.kubernetes.io/out-of-service",
        "nodeshutdown",
        "NoExecute",
    )
    assert added["timeAdded"] == "2026-11-28T14:02:12Z"
    assert result.record is not None
    assert result.record.taint_ours
    (entry,) = result.record.history
    assert entry == HistoryEntry(
        event_id=EVENT.event_id,
        vm="aks-spot-12345678-vmss_3",
        annotation="VirtualMachinePreempted",
        occurred="2026-11-28T14:00:31.512Z",
        at="2026-11-28T14:02:12.512Z",
        action=Step.TAINTED,
    )


def test_a_node_not_down_long_enough_is_retried_when_it_will_be() -> None:
    result = plan(facts(), after=45)
    assert result.outcome is Outcome.NOT_READY_YET
    assert result.retry_after == pytest.approx(15)
    assert result.taints is None
    assert result.record is None


def test_a_node_still_ready_is_retried_later_and_never_tainted() -> None:
    result = plan(facts(ready=True, changed=OCCURRED - timedelta(days=3)), after=3 * 86400 + 600)
    assert result.outcome is Outcome.NOT_READY_YET
    assert result.retry_after == 60
    assert result.taints is None


def test_a_node_ready_again_since_the_event_is_recorded_and_left_alone() -> None:
    result = plan(facts(ready=True, changed=OCCURRED + timedelta(minutes=3)), after=10)
    assert result.outcome is Outcome.RECOVERED
    assert result.taints is None
    assert result.record is not None
    assert [e.action for e in result.record.history] == [Step.NODE_READY]
    assert not result.record.taint_ours


@pytest.mark.parametrize(("ready", "changed"), [(None, None), (False, None)])
def test_a_node_without_a_ready_transition_time_is_not_tainted(
    ready: bool | None, changed: datetime | None
) -> None:
    result = plan(facts(ready=ready, changed=changed), after=3600)
    assert result.outcome is Outcome.NOT_READY_YET
    assert result.taints is None


def test_an_event_already_recorded_is_done() -> None:
    first = plan(facts(), after=61)
    assert first.record is not None
    again = plan(facts(taints=first.taints or (), record=first.record), after=300)
    assert again.outcome is Outcome.ALREADY_DONE
    assert (again.taints, again.record) == (None, None)


def test_a_taint_someone_else_put_there_is_recorded_but_not_claimed() -> None:
    theirs = {"key": TAINT.key, "value": "shutdown", "effect": "NoExecute"}
    result = plan(facts(taints=(SPOT, theirs)), after=61)
    assert result.outcome is Outcome.TAINTED
    assert result.taints is None  # unchanged
    assert result.record is not None
    assert not result.record.taint_ours
    assert result.record.history[-1].action is Step.ALREADY_TAINTED


def test_a_second_event_while_our_taint_is_there_keeps_it_ours() -> None:
    first = plan(facts(), after=61)
    assert first.record is not None
    other = replace(EVENT, event_id="another", annotation="VirtualMachineDeallocationInitiated")
    second = plan(facts(taints=first.taints or (), record=first.record), after=90, event=other)
    assert second.outcome is Outcome.TAINTED
    assert second.taints is None
    assert second.record is not None
    assert second.record.taint_ours
    assert [e.action for e in second.record.history] == [Step.TAINTED, Step.ALREADY_TAINTED]


def test_an_ignored_event_is_ignored() -> None:
    ignored = parse_message((DATA / "aks-live-migration-eventgrid.json").read_bytes())
    assert ignored.kind is EventKind.IGNORED
    assert plan(facts(), after=600, event=ignored).outcome is Outcome.IGNORED


def test_reconcile_removes_only_our_taint_and_only_from_a_ready_node() -> None:
    tainted = plan(facts(), after=61)
    assert tainted.record is not None
    assert tainted.taints is not None
    now = OCCURRED + timedelta(minutes=10)
    down = facts(taints=tainted.taints, record=tainted.record)
    assert plan_reconcile(down, now=now, taint=TAINT) is None
    up = replace(down, ready=True, ready_changed=now)
    result = plan_reconcile(up, now=now, taint=TAINT)
    assert result is not None
    assert result.outcome is Outcome.UNTAINTED
    assert result.taints == (SPOT,)
    assert result.record is not None
    assert not result.record.taint_ours
    assert [e.action for e in result.record.history] == [Step.TAINTED, Step.UNTAINTED]
    assert result.record.history[-1].event_id == EVENT.event_id
    # Not ours: left alone, Ready or not.
    theirs = replace(up, record=RecoveryRecord(taint_ours=False, history=tainted.record.history))
    assert plan_reconcile(theirs, now=now, taint=TAINT) is None


def test_reconcile_forgets_a_taint_someone_else_removed() -> None:
    tainted = plan(facts(), after=61)
    assert tainted.record is not None
    gone = facts(ready=True, taints=(SPOT,), record=tainted.record)
    result = plan_reconcile(gone, now=OCCURRED, taint=TAINT)
    assert result is not None
    assert result.outcome is Outcome.ALREADY_DONE
    assert result.taints is None
    assert result.record is not None
    assert not result.record.taint_ours
    assert result.record.history == tainted.record.history


def test_the_record_round_trips_and_keeps_the_last_entries() -> None:
    entries = tuple(
        HistoryEntry(f"e{i}", "vm_1", "VirtualMachinePreempted", "o", "a", Step.TAINTED)
        for i in range(HISTORY_LIMIT + 5)
    )
    record = RecoveryRecord()
    for entry in entries:
        record = record.add(entry, taint_ours=True)
    assert record.history == entries[-HISTORY_LIMIT:]
    text = render_record(record)
    assert text.startswith('{"history":[')
    assert parse_record(text) == record


@pytest.mark.parametrize("text", ["", "{", '{"v":1}', '{"history":[{"event_id":"x"}]}', "[]"])
def test_an_unreadable_record_is_empty(text: str) -> None:
    assert parse_record(text) == RecoveryRecord()


def test_node_facts_read_the_ready_condition_and_the_pool() -> None:
    node = {
        "metadata": {
            "name": "n",
            "resourceVersion": "3",
            "labels": {"kubernetes.azure.com/agentpool": "spot"},
        },
        "spec": {"providerID": "azure:///x", "taints": [SPOT, "junk"]},
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {
                    "type": "Ready",
                    "status": "Unknown",
                    "lastTransitionTime": "2026-11-28T14:01:10Z",
                },
            ]
        },
    }
    read = node_facts(node)
    assert (read.name, read.resource_version, read.nodepool) == ("n", "3", "spot")
    assert read.taints == (SPOT,)
    assert read.ready is False
    assert read.ready_changed == datetime(2026, 11, 28, 14, 1, 10, tzinfo=UTC)
    assert node_facts({"metadata": {"name": "bare"}}).ready is None


@pytest.mark.parametrize(
    ("text", "taint"),
    [
        (
            "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute",
            Taint("node.kubernetes.io/out-of-service", "nodeshutdown", "NoExecute"),
        ),
        ("example.com/gone:NoSchedule", Taint("example.com/gone", "", "NoSchedule")),
        ("gone=:PreferNoSchedule", Taint("gone", "", "PreferNoSchedule")),
    ],
)
def test_taints_are_written_as_kubectl_writes_them(text: str, taint: Taint) -> None:
    assert parse_taint(text) == taint
    assert parse_taint(str(taint)) == taint


@pytest.mark.parametrize(
    "text", ["", "novalue", "k=v", "k=v:Sometimes", "k=v v:NoExecute", "a/b/c=v:NoExecute"]
)
def test_bad_taints_say_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="key=value:Effect"):
        parse_taint(text)
