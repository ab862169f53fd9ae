"""Which pods are asked to checkpoint, and what their answers mean (pure policy)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spotguard.checkpoint.targets import (
    METRIC_OUTCOME,
    Outcome,
    Result,
    outcome_of_status,
    parse_answer,
    summary,
    target,
)


def pod(annotations: dict[str, str] | None, *, phase: str = "Running", ip: str = "10.1.2.3") -> Any:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "annotations": annotations},
        "status": {"phase": phase, "podIP": ip},
    }


OPTED = {"spotguard.io/checkpoint": "http"}
BAD_BYTES = "answer 200 without a valid 'bytes'"


def test_defaults_port_and_path() -> None:
    found = target(pod(OPTED))
    assert found is not None
    assert (found.port, found.path, found.problem) == (8471, "/checkpoint", "")
    assert found.url == "http://10.1.2.3:8471/checkpoint"


def test_ipv6_pod_ip_is_bracketed() -> None:
    found = target(pod(OPTED, ip="fd00::12"))
    assert found is not None
    assert found.url == "http://[fd00::12]:8471/checkpoint"


@pytest.mark.parametrize(
    "annotations",
    [None, {}, {"spotguard.io/checkpoint": "true"}, {"spotguard.io/checkpoint": "HTTP"}],
)
def test_pods_that_did_not_opt_in_are_not_asked(annotations: Any) -> None:
    assert target(pod(annotations)) is None


@pytest.mark.parametrize("phase", ["Pending", "Succeeded", "Failed"])
def test_pods_not_running_are_not_asked(phase: str) -> None:
    assert target(pod(OPTED, phase=phase)) is None


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"spotguard.io/checkpoint-port": "0"}, "checkpoint-port"),
        ({"spotguard.io/checkpoint-port": "65536"}, "checkpoint-port"),
        ({"spotguard.io/checkpoint-port": "-1"}, "checkpoint-port"),
        ({"spotguard.io/checkpoint-path": "relative"}, "checkpoint-path"),
        ({"spotguard.io/checkpoint-path": "/a b"}, "checkpoint-path"),
        ({"spotguard.io/checkpoint-path": "/" + "x" * 300}, "checkpoint-path"),
    ],
)
def test_unusable_annotations_say_why(extra: dict[str, str], problem: str) -> None:
    found = target(pod({**OPTED, **extra}))
    assert found is not None
    assert problem in found.problem


def test_a_pod_without_ip_cannot_be_asked() -> None:
    found = target(pod(OPTED, ip=""))
    assert found is not None
    assert found.problem == "the pod has no IP yet"


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SAVED),
        (409, Outcome.EXITING),
        (401, Outcome.REFUSED),
        (403, Outcome.REFUSED),
        (503, Outcome.NOT_SAVED),
        (504, Outcome.NOT_SAVED),
        (404, Outcome.NOT_SAVED),
    ],
)
def test_status_codes(status: int, outcome: Outcome) -> None:
    assert outcome_of_status(status) is outcome


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b'{"location": "abfs://c/x", "bytes": 7}', ("abfs://c/x", 7, "")),
        (200, b'{"location": "x", "bytes": -1}', ("x", None, "answer 200 without a valid 'bytes'")),
        (
            200,
            b'{"location": "x", "bytes": true}',
            ("x", None, "answer 200 without a valid 'bytes'"),
        ),
        (200, b'{"bytes": 1}', ("", None, "answer 200 without a 'location'")),
        (200, b"[]", ("", None, "answer 200 is not a JSON object: b'[]'")),
        (200, b"\xff", ("", None, "answer 200 is not a JSON object: b'\\xff'")),
        (503, b'{"error": "disk full"}', ("", None, "disk full")),
        (504, b"{}", ("", None, "answered 504")),
    ],
)
def test_answers(status: int, body: bytes, expected: tuple[str, int | None, str]) -> None:
    assert parse_answer(status, body) == expected


def test_every_outcome_has_a_metric_outcome() -> None:
    assert set(METRIC_OUTCOME) == set(Outcome)
    assert set(METRIC_OUTCOME.values()) == {"success", "error", "skipped"}


def test_annotation_is_one_json_line() -> None:
    saved = Result("ns", "p", Outcome.SAVED, seconds=1.23456, status=200, location="x", size=3)
    doc = json.loads(saved.annotation(event_id="e1", at="2026-11-28T00:00:00Z"))
    assert doc == {
        "event_id": "e1",
        "result": "saved",
        "at": "2026-11-28T00:00:00Z",
        "seconds": 1.235,
        "status": 200,
        "location": "x",
        "bytes": 3,
    }
    failed = Result("ns", "q", Outcome.TIMEOUT, error="e" * 1000)
    assert len(json.loads(failed.annotation(event_id="e1", at="t"))["error"]) == 300


def test_summary_names_the_steps_that_did_not_save() -> None:
    results = [
        Result("ns", "a", Outcome.SAVED),
        Result("ns", "b", Outcome.SAVED),
        Result("ns", "c", Outcome.TIMEOUT),
    ]
    assert summary(results) == (
        "checkpoint requested from 3 pipeline steps: 2 saved, 1 timeout; not saved: ns/c (timeout)"
    )
