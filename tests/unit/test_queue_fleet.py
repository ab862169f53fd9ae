"""The fleet count's pure parts: the ledger's decision (one eviction per VM per window) and
reading the agents' notices as queue mode's subscription receives them."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from spotguard.model import Kind, Notice, Source, Status
from spotguard.queue.events import InvalidEvent
from spotguard.queue.fleet import (
    MAX_ENTRIES,
    RETENTION,
    WINDOW,
    Decision,
    Entry,
    Eviction,
    parse_ledger,
    plan_claim,
    render_ledger,
)
from spotguard.queue.fleet import Source as Reporter
from spotguard.queue.notices import parse_notice
from spotguard.sinks.cloudevents import CONTENT_TYPE, Origin, Phase, notice_event, outcome_event
from tests.notices import preempt_notice

EVICTED = datetime(2026, 11, 28, 14, 0, 31, 512000, tzinfo=UTC)
NOW = EVICTED + timedelta(minutes=3)
VM = "aks-spot-12345678-vmss_3"
NODE = "aks-spot-12345678-vmss000003"
ORIGIN = Origin(cluster="aks-ml", node=NODE, nodepool="spot")


def eviction(
    at: datetime = EVICTED, vm: str = VM, source: Reporter = Reporter.EVENT_GRID
) -> Eviction:
    return Eviction(vm=vm, evicted=at, source=source, source_id="id-1", nodepool="spot", node=NODE)


def entry(at: datetime = EVICTED, vm: str = VM, source: str = "notice") -> Entry:
    return Entry(
        vm=vm, evicted=at, source=source, id="n-1", nodepool="spot", node=NODE, at="2026-11-28T14Z"
    )


# --- the ledger's decision ------------------------------------------------------------------


def test_a_first_report_is_counted_and_recorded() -> None:
    plan = plan_claim((), eviction(), now=NOW)
    assert plan.decision is Decision.COUNTED
    assert plan.entries is not None
    (recorded,) = plan.entries
    assert (recorded.vm, recorded.evicted, recorded.source, recorded.id) == (
        VM,
        EVICTED,
        "eventgrid",
        "id-1",
    )
    assert recorded.at == "2026-11-28T14:03:31.512Z"


@pytest.mark.parametrize("offset", [timedelta(0), WINDOW, -WINDOW, timedelta(seconds=-28)])
def test_the_same_vm_within_the_window_is_a_duplicate(offset: timedelta) -> None:
    known = entry(EVICTED + offset)
    plan = plan_claim((known,), eviction(), now=NOW)
    assert (plan.decision, plan.match, plan.entries) == (Decision.DUPLICATE, known, None)


def test_vm_names_compare_ignoring_case() -> None:
    plan = plan_claim((entry(vm=VM.upper()),), eviction(), now=NOW)
    assert plan.decision is Decision.DUPLICATE


@pytest.mark.parametrize(
    "known",
    [
        entry(EVICTED - WINDOW - timedelta(seconds=1)),  # an earlier eviction of the same VM
        entry(EVICTED + timedelta(hours=2)),
        entry(vm="aks-spot-12345678-vmss_4"),  # another VM at the same moment
    ],
)
def test_another_eviction_is_counted_beside_the_known_one(known: Entry) -> None:
    plan = plan_claim((known,), eviction(), now=NOW + timedelta(hours=2))
    assert plan.decision is Decision.COUNTED
    assert plan.entries is not None
    assert len(plan.entries) == 2
    assert list(plan.entries) == sorted(plan.entries, key=lambda e: e.evicted)


def test_entries_older_than_the_retention_are_dropped() -> None:
    old = entry(NOW - RETENTION - timedelta(seconds=1), vm="aks-spot-12345678-vmss_1")
    kept = entry(NOW - RETENTION + timedelta(minutes=1), vm="aks-spot-12345678-vmss_2")
    plan = plan_claim((old, kept), eviction(), now=NOW)
    assert plan.entries is not None
    assert [e.vm for e in plan.entries] == [kept.vm, VM]


def test_a_report_older_than_the_ledger_remembers_is_not_counted() -> None:
    late = eviction(NOW - RETENTION + WINDOW - timedelta(seconds=1))
    assert plan_claim((), late, now=NOW).decision is Decision.TOO_OLD
    in_time = eviction(NOW - RETENTION + WINDOW)
    assert plan_claim((), in_time, now=NOW).decision is Decision.COUNTED


def test_a_full_ledger_drops_its_oldest_and_always_keeps_the_new_entry() -> None:
    full = [
        entry(NOW - timedelta(minutes=i), vm=f"aks-spot-12345678-vmss_{i + 10}") for i in range(3)
    ]
    oldest_report = eviction(NOW - timedelta(hours=1))
    plan = plan_claim(full, oldest_report, now=NOW, max_entries=3)
    assert plan.entries is not None
    assert [e.vm for e in plan.entries] == [
        VM,
        "aks-spot-12345678-vmss_11",
        "aks-spot-12345678-vmss_10",
    ]
    assert MAX_ENTRIES * 250 < 1 << 20  # the ConfigMap's limit, with room for long names


def test_the_ledger_round_trips_and_unreadable_parts_are_skipped() -> None:
    entries = (entry(), entry(EVICTED + timedelta(hours=1), source="eventgrid"))
    text = render_ledger(entries)
    assert json.loads(text)["v"] == 1
    assert parse_ledger(text) == entries
    assert parse_ledger(None) == ()
    assert parse_ledger("{not json") == ()
    assert parse_ledger('{"v": 1, "evictions": {"a": 1}}') == ()
    doc = json.loads(text)
    doc["evictions"].insert(0, {"vm": VM, "evicted": "yesterday"})
    doc["evictions"].insert(0, {"vm": VM, "evicted": "2026-11-28T14:00:00"})  # no offset
    doc["evictions"].insert(0, "an entry")
    assert parse_ledger(json.dumps(doc)) == entries


# --- notices ----------------------------------------------------------------------------


def notice(**changes: Any) -> Notice:
    return replace(preempt_notice(node=NODE, vm=VM, not_before=EVICTED), **changes)


def parse(event: Any, properties: dict[str, str] | None = None) -> Any:
    return parse_notice(
        event.body(),
        content_type=CONTENT_TYPE,
        application_properties=event.properties if properties is None else properties,
    )


def test_a_preempt_notice_as_agents_publish_it_is_an_eviction() -> None:
    event = notice_event(notice(), ORIGIN, EVICTED - timedelta(seconds=29))
    # the SDK hands application properties over as bytes
    raw = {k.encode(): v.encode() for k, v in event.properties.items()}
    read = parse_notice(event.body(), content_type=CONTENT_TYPE, application_properties=raw)
    assert read.countable
    assert (read.id, read.cluster, read.node, read.nodepool, read.vm, read.evicted_at) == (
        f"{NODE}:A123BC45-0000-4000-8000-000000000003:noticed",
        "aks-ml",
        NODE,
        "spot",
        VM,
        EVICTED,
    )


def test_without_properties_the_cluster_comes_from_the_source() -> None:
    read = parse(notice_event(notice(), ORIGIN, NOW), {})
    assert (read.cluster, read.nodepool) == ("aks-ml", "")
    unnamed = notice_event(notice(), replace(ORIGIN, cluster=""), NOW)
    assert parse(unnamed, {}).cluster == ""


def test_a_notice_first_seen_started_has_its_deadline_as_the_time() -> None:
    started = notice(status=Status.STARTED, not_before=None, deadline=EVICTED)
    read = parse(notice_event(started, ORIGIN, NOW))
    assert (read.countable, read.evicted_at) == (True, EVICTED)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (notice_event(notice(kind=Kind.REBOOT), ORIGIN, NOW), "'reboot' notice"),
        (notice_event(notice(status=Status.CANCELLED), ORIGIN, NOW), "cancelled"),
        (notice_event(notice(source=Source.DRILL), ORIGIN, NOW), "drill"),
        (
            outcome_event(notice(), ORIGIN, NOW, Phase.DRAINED, result="drained"),
            "io.spotguard.outcome.v1",
        ),
    ],
)
def test_what_is_not_an_eviction_is_recognised(event: Any, reason: str) -> None:
    read = parse(event)
    assert not read.countable
    assert reason in read.ignore_reason


def _body(event: Any, **changes: Any) -> bytes:
    doc = json.loads(event.body())
    for key, value in changes.items():
        if key.startswith("data_"):
            if value is None:
                doc["data"].pop(key[5:])
            else:
                doc["data"][key[5:]] = value
        elif value is None:
            doc.pop(key)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


GOOD = notice_event(notice(), ORIGIN, NOW)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b"[1, 2]", "JSON array"),
        (_body(GOOD, specversion="0.3"), "specversion"),
        (_body(GOOD, id=None), "id is missing"),
        (_body(GOOD, source=""), "source is empty"),
        (_body(GOOD, data=[1]), "data is a JSON array"),
        (_body(GOOD, data_vm_name=None), "vm_name is missing"),
        (_body(GOOD, data_kind=7), "kind is a JSON number"),
        (_body(GOOD, data_node="../../secrets"), "not a node name"),
        (_body(GOOD, data_not_before="soon"), "not an RFC 3339 time"),
        (_body(GOOD, data_not_before=None, data_deadline=None, time=None), "without not_before"),
    ],
)
def test_malformed_messages_are_invalid_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_notice(body, content_type=CONTENT_TYPE, application_properties={})
    assert reason in caught.value.reason


def test_a_non_json_content_type_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="not JSON"):
        parse_notice(GOOD.body(), content_type="text/plain", application_properties={})
