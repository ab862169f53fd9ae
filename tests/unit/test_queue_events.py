"""Event Grid / CloudEvents messages → FleetEvent, against Azure's own example documents."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotguard.queue.events import (
    ANNOTATED,
    AVAILABILITY_CHANGED,
    MAX_REASON_CHARS,
    EventKind,
    FleetEvent,
    InvalidEvent,
    Schema,
    parse_message,
)
from spotguard.sources.identity import VmIdentity

DATA = Path(__file__).parents[1] / "data" / "eventgrid"
DOCS_TIME = datetime(2023, 7, 24, 19, 20, 37, 924507, tzinfo=UTC)
AKS_VM = VmIdentity(
    "00000000-0000-0000-0000-000000000000",
    "MC_rg-ml_aks-ml_westeurope",
    "aks-spot-12345678-vmss",
    "3",
)


def raw(name: str) -> bytes:
    return (DATA / name).read_bytes()


def doc(name: str) -> Any:
    return json.loads(raw(name))


def parse(document: Any, **kwargs: Any) -> FleetEvent:
    return parse_message(json.dumps(document).encode(), **kwargs)


def reason(document: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse(document, **kwargs)
    return info.value.reason


# --- golden documents -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "schema"),
    [
        ("docs-resourceannotated-cloudevent.json", Schema.CLOUD_EVENTS),
        ("docs-resourceannotated-eventgrid.json", Schema.EVENT_GRID),
    ],
)
def test_docs_deallocation_annotation_is_relevant(name: str, schema: Schema) -> None:
    event = parse_message(raw(name))
    assert event.schema is schema
    assert event.event_id == "8945cf9b-e220-496e-ab4f-f3a239318995"
    assert event.event_type == ANNOTATED
    assert event.kind is EventKind.DEALLOCATED
    assert event.relevant
    assert event.annotation == "VirtualMachineDeallocationInitiated"
    assert event.vm == VmIdentity("{subscription-id}", "{rg-name}", None, "{vm-name}")
    assert event.resource_id.endswith("/Microsoft.Compute/virtualMachines/{vm-name}")
    assert event.occurred_at == DOCS_TIME
    assert event.published_at == DOCS_TIME
    assert (event.context, event.category) == ("Customer Initiated", "Not Applicable")
    assert event.reason == "Stopping and deallocating"
    assert event.ignore_reason == ""


@pytest.mark.parametrize(
    "name",
    [
        "docs-availabilitystatuschanged-cloudevent.json",
        "docs-availabilitystatuschanged-eventgrid.json",
    ],
)
def test_docs_availability_change_is_valid_and_ignored(name: str) -> None:
    event = parse_message(raw(name))
    assert event.event_id == "1fb6fa94-d965-4306-abeq-4810f0774e97"  # not a GUID, and fine
    assert event.event_type == AVAILABILITY_CHANGED
    assert event.kind is EventKind.IGNORED
    assert not event.relevant
    assert event.annotation is None
    assert event.availability_state == "Available"
    assert "availability status" in event.ignore_reason


@pytest.mark.parametrize(
    ("name", "schema", "content_type"),
    [
        ("aks-spot-preempted-eventgrid.json", Schema.EVENT_GRID, "application/json"),
        (
            "aks-spot-preempted-cloudevent.json",
            Schema.CLOUD_EVENTS,
            "application/cloudevents+json; charset=utf-8",
        ),
    ],
)
def test_aks_spot_preemption_names_the_scale_set_vm(
    name: str, schema: Schema, content_type: str
) -> None:
    event = parse_message(raw(name), content_type=content_type)
    assert event.schema is schema
    assert event.kind is EventKind.PREEMPTED
    assert event.event_id == "5b0f2c8e-7a6d-4c1e-9f3b-2d8a6e4c1f70"
    assert event.vm == AKS_VM
    assert event.vm_name == "aks-spot-12345678-vmss_3"
    assert event.occurred_at == datetime(2026, 11, 28, 14, 0, 31, 512000, tzinfo=UTC)
    assert event.published_at == datetime(2026, 11, 28, 14, 0, 33, 41000, tzinfo=UTC)
    assert (event.context, event.category) == ("Platform Initiated", "Unplanned")


def test_other_annotations_are_valid_and_ignored() -> None:
    event = parse_message(raw("aks-live-migration-eventgrid.json"))
    assert event.kind is EventKind.IGNORED
    assert event.annotation == "LiveMigrationSucceeded"
    assert event.vm_name == "aks-spot-12345678-vmss_1"
    assert "needs no action" in event.ignore_reason


def test_event_grid_schema_as_a_single_object_or_an_array_of_one_is_the_same_event() -> None:
    (single,) = doc("aks-spot-preempted-eventgrid.json")
    assert parse(single) == parse([single])


def test_both_schemas_give_the_same_event_but_for_the_schema() -> None:
    grid = parse_message(raw("aks-spot-preempted-eventgrid.json"))
    cloud = parse_message(raw("aks-spot-preempted-cloudevent.json"))
    assert grid.schema != cloud.schema
    assert {**_fields(grid), "schema": None} == {**_fields(cloud), "schema": None}


def _fields(event: FleetEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in FleetEvent.__slots__}  # type: ignore[attr-defined]


def test_annotation_names_and_event_types_are_compared_ignoring_case() -> None:
    (event,) = doc("aks-spot-preempted-eventgrid.json")
    event["eventType"] = event["eventType"].lower()
    event["data"]["resourceInfo"]["properties"]["annotationName"] = "virtualmachinepreempted"
    parsed = parse(event)
    assert parsed.kind is EventKind.PREEMPTED
    assert parsed.event_type == ANNOTATED


def test_times_fall_back_from_occurred_to_resource_event_to_envelope() -> None:
    (event,) = doc("aks-spot-preempted-eventgrid.json")
    del event["data"]["resourceInfo"]["properties"]["occurredTime"]
    event["data"]["operationalInfo"]["resourceEventTime"] = "2026-11-28T14:00:32+01:00"
    assert parse(event).occurred_at == datetime(2026, 11, 28, 13, 0, 32, tzinfo=UTC)
    del event["data"]["operationalInfo"]
    assert parse(event).occurred_at == parse(event).published_at


def test_the_subject_names_the_vm_when_the_target_resource_id_is_missing() -> None:
    (event,) = doc("aks-spot-preempted-eventgrid.json")
    del event["data"]["resourceInfo"]["properties"]["targetResourceId"]
    assert parse(event).vm == AKS_VM


def test_an_annotation_of_the_scale_set_itself_is_ignored() -> None:
    (event,) = doc("aks-spot-preempted-eventgrid.json")
    vmss = event["subject"].rsplit("/virtualMachines/", 1)[0]
    event["subject"] = vmss
    event["data"]["resourceInfo"]["properties"]["targetResourceId"] = vmss
    parsed = parse(event)
    assert parsed.kind is EventKind.IGNORED
    assert parsed.vm is None
    assert "scale set" in parsed.ignore_reason


def test_event_grid_lifecycle_events_are_ignored() -> None:
    deleted = {
        "id": "d1",
        "topic": "/subscriptions/x",
        "subject": "/subscriptions/x/eventSubscriptions/spotguard",
        "eventType": "Microsoft.EventGrid.SubscriptionDeletedEvent",
        "eventTime": "2026-11-28T14:00:00Z",
        "data": {"eventSubscriptionId": "/subscriptions/x/eventSubscriptions/spotguard"},
        "dataVersion": "1",
    }
    parsed = parse(deleted)
    assert parsed.kind is EventKind.IGNORED
    assert "lifecycle" in parsed.ignore_reason


@pytest.mark.parametrize("prefix", ["cloudEvents_", "cloudEvents:"])
def test_cloud_events_binary_mode_reads_attributes_from_application_properties(
    prefix: str,
) -> None:
    structured = doc("aks-spot-preempted-cloudevent.json")
    data = structured.pop("data")
    properties: dict[Any, Any] = {
        (prefix + key).encode(): value.encode() for key, value in structured.items()
    }
    properties[b"aeg-event-type"] = b"Notification"
    event = parse_message(
        json.dumps(data).encode(),
        content_type="application/json",
        application_properties=properties,
    )
    assert event == parse_message(raw("aks-spot-preempted-cloudevent.json"))


def test_a_str_body_reads_like_bytes() -> None:
    text = raw("aks-spot-preempted-cloudevent.json").decode()
    assert parse_message(text) == parse_message(text.encode())


# --- invalid: dead-letter with a reason ------------------------------------------------------


def _eg() -> dict[str, Any]:
    (event,) = doc("aks-spot-preempted-eventgrid.json")
    return dict(event)


def _ce() -> dict[str, Any]:
    return dict(doc("aks-spot-preempted-cloudevent.json"))


def _without(document: dict[str, Any], *path: str) -> dict[str, Any]:
    document = copy.deepcopy(document)
    target = document
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return document


def _with(document: dict[str, Any], value: Any, *path: str) -> dict[str, Any]:
    document = copy.deepcopy(document)
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


_PROPS = ("data", "resourceInfo", "properties")


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([], "an array of 0 events"),
        ([_eg(), _eg()], "an array of 2 events"),
        ("hello", "a JSON string, not an event object"),
        (42, "a JSON number"),
        ({"id": "x"}, "neither a CloudEvent"),
        (_without(_eg(), "id"), "id is missing"),
        (_with(_eg(), "", "id"), "id is empty"),
        (_with(_eg(), 7, "id"), "id is a JSON number"),
        (_without(_eg(), "eventTime"), "eventTime is missing"),
        (_with(_eg(), "yesterday", "eventTime"), "eventTime 'yesterday' is not an RFC 3339 time"),
        (_with(_eg(), "Microsoft.Storage.BlobCreated", "eventType"), "unknown event type"),
        (_with(_eg(), None, "data"), "data is a JSON null"),
        (_without(_eg(), "data", "resourceInfo"), "data.resourceInfo is missing"),
        (_with(_eg(), [], "data", "resourceInfo", "properties"), "properties is missing or not"),
        (_without(_eg(), *_PROPS, "annotationName"), "annotationName is missing"),
        (_with(_eg(), ["x"], *_PROPS, "reason"), "reason is a JSON array"),
        (_with(_eg(), "now", *_PROPS, "occurredTime"), "occurredTime 'now' is not an RFC 3339"),
        (
            _with(
                _eg(),
                "/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/x/y",
                *_PROPS,
                "targetResourceId",
            ),
            "is not a VM resource id",
        ),
        (
            _with(_without(_eg(), *_PROPS, "targetResourceId"), "", "subject"),
            "no targetResourceId and no subject",
        ),
        (_with(_ce(), "0.3", "specversion"), "specversion '0.3' is not 1.0"),
        (_without(_ce(), "source"), "source is missing"),
        (_without(_ce(), "type"), "type is missing"),
        (_with(_ce(), "application/xml", "datacontenttype"), "datacontenttype 'application/xml'"),
        (
            _without(
                _without(_without(_ce(), "time"), *_PROPS, "occurredTime"),
                "data",
                "operationalInfo",
            ),
            "no time",
        ),
    ],
)
def test_invalid_events_say_why(document: Any, expected: str) -> None:
    assert expected in reason(document)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"", None, "not JSON"),
        (b"{", None, "not JSON"),
        (b"\xff\xfe\x00", None, "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, None, "not JSON"),
        (b"{}", "application/octet-stream", "content type 'application/octet-stream' is not JSON"),
        (b" " * (3 << 20), None, "larger than any Event Grid event"),
    ],
)
def test_unreadable_bodies_say_why(body: bytes, content_type: str | None, expected: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_message(body, content_type=content_type)
    assert expected in info.value.reason


def test_reasons_are_bounded_for_the_dead_letter_queue() -> None:
    huge = _with(_eg(), "x" * 10_000, "eventType")
    assert len(reason(huge)) <= MAX_REASON_CHARS


# --- fuzz: nothing but InvalidEvent ever escapes ---------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_text = st.sampled_from(
    [
        "VirtualMachinePreempted",
        "VirtualMachineDeallocationInitiated",
        "LiveMigrationSucceeded",
        ANNOTATED,
        AVAILABILITY_CHANGED,
        "1.0",
        "2026-11-28T14:00:31.5120000Z",
        "2026-11-28",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+14:00",
        AKS_VM.resource_id,
        "azure:///" + AKS_VM.resource_id,
        "",
    ]
)
_leaf = _text | _json


def _mutations(template: dict[str, Any]) -> st.SearchStrategy[Any]:
    """The template with any of its leaves replaced, or removed."""
    paths: list[tuple[str, ...]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                paths.append((*path, key))
                walk(child, (*path, key))

    walk(template, ())

    @st.composite
    def mutated(draw: st.DrawFn) -> Any:
        document = copy.deepcopy(template)
        for path in draw(st.lists(st.sampled_from(paths), max_size=4)):
            target = document
            for key in path[:-1]:
                target = target.get(key) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                continue
            if draw(st.booleans()):
                target.pop(path[-1], None)
            else:
                target[path[-1]] = draw(_leaf)
        return draw(st.sampled_from([document, [document], [document, document]]))

    return mutated()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(_eg()) | _mutations(_ce()))
def test_fuzz_mutated_events_give_an_event_or_invalid_event(document: Any) -> None:
    try:
        event = parse(document)
    except InvalidEvent as exc:
        problem = exc.reason
        event = None
    if event is None:
        assert problem
        assert not problem.startswith("unreadable event"), problem  # a bug, caught as a net
        return
    assert event.event_id
    assert event.occurred_at.tzinfo is not None
    assert event.relevant == (event.kind is not EventKind.IGNORED)
    assert event.relevant <= (event.vm is not None)
    assert event.relevant or event.ignore_reason


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=2048),
    st.none() | st.text(max_size=40),
    st.dictionaries(st.binary(max_size=20) | st.text(max_size=20), st.binary(max_size=20) | _json),
)
def test_fuzz_arbitrary_messages_never_raise_anything_else(
    body: bytes, content_type: str | None, properties: dict[Any, Any]
) -> None:
    try:
        parse_message(body, content_type=content_type, application_properties=properties)
    except InvalidEvent as exc:
        problem = exc.reason
    else:
        problem = ""
    assert not problem.startswith("unreadable event"), problem  # a bug, caught as a net


def test_a_bug_on_strange_input_is_still_an_invalid_event_not_a_crash() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    with pytest.raises(InvalidEvent, match="unreadable event"):
        parse_message(b"{}", application_properties={Unprintable(): b"x"})
