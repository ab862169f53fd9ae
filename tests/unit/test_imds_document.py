import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotguard.errors import InvalidDocument
from spotguard.model import Kind, Status
from spotguard.sources.imds_document import (
    MAX_DOCUMENT_BYTES,
    format_not_before,
    parse_document,
    parse_not_before,
)

DATA = Path(__file__).parent.parent / "data" / "imds"


def golden(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_golden_freeze_sequence_from_azure_docs() -> None:
    empty = parse_document(golden("docs-freeze-1-empty.json"))
    assert (empty.incarnation, empty.events, empty.rejected) == (1, (), ())

    scheduled = parse_document(golden("docs-freeze-2-scheduled.json"))
    (event,) = scheduled.events
    assert scheduled.incarnation == 2
    assert event.event_id == "C7061BAC-AFDC-4513-B24B-AA5F13A16123"
    assert event.kind is Kind.FREEZE
    assert event.status is Status.SCHEDULED
    assert event.resources == ("WestNO_0", "WestNO_1")
    # The docs' weekday ("Mon") does not match 11 Apr 2026; the date is what counts.
    assert event.not_before == datetime(2026, 4, 11, 22, 26, 58, tzinfo=UTC)
    assert event.duration_s == 5
    assert event.event_source == "Platform"
    assert event.description.startswith("Virtual machine is being paused")

    started = parse_document(golden("docs-freeze-3-started.json"))
    assert started.events[0].status is Status.STARTED
    assert started.events[0].not_before is None
    assert parse_document(golden("docs-freeze-4-empty.json")).events == ()


def test_golden_schema_example_and_aks_preempt() -> None:
    (reboot,) = parse_document(golden("docs-schema-reboot.json")).events
    assert reboot.kind is Kind.REBOOT
    assert reboot.not_before == datetime(2016, 9, 19, 18, 29, 47, tzinfo=UTC)
    (preempt,) = parse_document(golden("aks-spot-preempt.json")).events
    assert preempt.kind is Kind.PREEMPT
    assert preempt.resources == ("aks-spot-12345678-vmss_3",)
    assert preempt.duration_s == -1


def test_not_before_round_trip() -> None:
    moment = datetime(2026, 11, 28, 14, 0, 30, tzinfo=UTC)
    assert format_not_before(moment) == "Sat, 28 Nov 2026 14:00:30 GMT"
    assert parse_not_before(format_not_before(moment)) == moment
    assert parse_not_before("") is None
    with pytest.raises(ValueError, match="RFC 1123"):
        parse_not_before("2026-11-28T14:00:30Z")


def test_older_api_versions_without_duration_or_source() -> None:
    doc = {
        "DocumentIncarnation": 1,
        "Events": [
            {
                "EventId": "e1",
                "EventType": "Preempt",
                "ResourceType": "VirtualMachine",
                "Resources": ["vm"],
                "EventStatus": "Scheduled",
                "NotBefore": "Sat, 28 Nov 2026 14:00:30 GMT",
            }
        ],
    }
    (event,) = parse_document(json.dumps(doc).encode()).events
    assert (event.duration_s, event.event_source, event.description) == (-1, "", "")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"<html><body>502 Bad Gateway</body></html>", "HTML"),
        (b"[]", "expected a JSON object"),
        (b"null", "expected a JSON object"),
        (b'{"Events": []}', "DocumentIncarnation"),
        (b'{"DocumentIncarnation": "3", "Events": []}', "DocumentIncarnation"),
        (b'{"DocumentIncarnation": true, "Events": []}', "DocumentIncarnation"),
        (b'{"DocumentIncarnation": 3}', "Events"),
        (b'{"DocumentIncarnation": 3, "Events": {}}', "Events"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
    ],
)
def test_unusable_documents_are_rejected_whole(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidDocument, match=reason):
        parse_document(raw)


def test_huge_document_is_rejected_before_parsing() -> None:
    raw = b'{"DocumentIncarnation": 1, "Events": [], "pad": "' + b"x" * MAX_DOCUMENT_BYTES + b'"}'
    with pytest.raises(InvalidDocument, match="exceeds"):
        parse_document(raw)


GOOD = {
    "EventId": "good",
    "EventType": "Preempt",
    "ResourceType": "VirtualMachine",
    "Resources": ["vm"],
    "EventStatus": "Scheduled",
    "NotBefore": "Sat, 28 Nov 2026 14:00:30 GMT",
    "Description": "",
    "EventSource": "Platform",
    "DurationInSeconds": -1,
}


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"EventType": "Explode"}, "unknown EventType"),
        ({"EventType": 3}, "EventType must be a string"),
        ({"EventStatus": "Completed"}, "unknown EventStatus"),
        ({"Resources": "vm"}, "Resources"),
        ({"Resources": [1]}, "Resources"),
        ({"NotBefore": "tomorrow"}, "RFC 1123"),
        ({"NotBefore": ""}, "no NotBefore"),
        ({"DurationInSeconds": "5"}, "DurationInSeconds"),
        ({"DurationInSeconds": True}, "DurationInSeconds"),
        ({"EventId": ""}, "EventId"),
    ],
)
def test_bad_entries_are_rejected_alone(patch: dict[str, object], reason: str) -> None:
    bad = {**GOOD, "EventId": "bad", **patch}
    doc = {"DocumentIncarnation": 5, "Events": [GOOD, bad]}
    parsed = parse_document(json.dumps(doc).encode())
    assert [e.event_id for e in parsed.events] == ["good"]
    (rejected,) = parsed.rejected
    assert reason in rejected.reason
    assert rejected.event_id == (None if patch.get("EventId") == "" else "bad")


def test_missing_fields_and_non_objects_and_duplicates() -> None:
    no_type = {k: v for k, v in GOOD.items() if k != "EventType"}
    doc = {"DocumentIncarnation": 5, "Events": [GOOD, GOOD, "junk", {**no_type, "EventId": "x"}]}
    parsed = parse_document(json.dumps(doc).encode())
    assert [e.event_id for e in parsed.events] == ["good"]
    reasons = sorted(r.reason for r in parsed.rejected)
    assert reasons == [
        "EventType must be a string, got NoneType",
        "duplicate EventId",
        "event is a str",
    ]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
_entry = st.fixed_dictionaries(
    {},
    optional={
        "EventId": st.one_of(st.text(max_size=40), _json),
        "EventType": st.sampled_from(["Preempt", "Reboot", "Freeze", "Redeploy", "Terminate"])
        | _json,
        "EventStatus": st.sampled_from(["Scheduled", "Started"]) | _json,
        "Resources": st.lists(st.text(max_size=30), max_size=3) | _json,
        "NotBefore": st.sampled_from(["", "Sat, 28 Nov 2026 14:00:30 GMT", "Mon, 99 Foo"]) | _json,
        "DurationInSeconds": st.integers() | _json,
        "Description": _json,
        "EventSource": _json,
    },
)
_document = st.fixed_dictionaries(
    {},
    optional={
        "DocumentIncarnation": st.integers() | _json,
        "Events": st.lists(_entry | _json, max_size=5) | _json,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_document)
def test_fuzz_structured_documents_never_crash(doc: object) -> None:
    try:
        parsed = parse_document(json.dumps(doc).encode())
    except InvalidDocument:
        return
    for event in parsed.events:
        assert event.event_id
        assert event.status in (Status.SCHEDULED, Status.STARTED)
        assert (event.not_before is None) == (event.status is Status.STARTED)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes_never_crash(raw: bytes) -> None:
    outcome = "ok"
    try:
        parse_document(raw)
    except InvalidDocument as exc:
        outcome = exc.outcome
    assert outcome in {"ok", "invalid_document"}
