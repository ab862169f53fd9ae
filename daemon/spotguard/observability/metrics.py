"""The metric catalogue (DESIGN.md, Contracts → Metrics), on a registry the caller owns.

Labels come from small fixed sets and every labelled series exists at zero from the start, so a
rate() over a preemption that happened in the first scrape still works. Node, pod and namespace
come from Prometheus target labels, never from here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from spotguard.model import Kind, Source

IMDS_OUTCOMES = (
    "ok",
    "http_4xx",
    "throttled",
    "http_5xx",
    "timeout",
    "connection_error",
    "invalid_document",
)
# IMDS answers in single milliseconds; the long tail is the first (enabling) request.
_IMDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 120.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.notices = Counter(
            "spotguard_notices_total",
            "Scheduled events for this VM seen for the first time.",
            ["kind", "source"],
            registry=registry,
        )
        self.imds_requests = Counter(
            "spotguard_imds_requests_total",
            "IMDS requests by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.imds_request_duration = Histogram(
            "spotguard_imds_request_duration_seconds",
            "Duration of IMDS requests.",
            buckets=_IMDS_BUCKETS,
            registry=registry,
        )
        self.imds_last_success = Gauge(
            "spotguard_imds_last_success_timestamp_seconds",
            "Wall-clock time of the last valid IMDS Scheduled Events document.",
            registry=registry,
        )
        self.imds_invalid_events = Counter(
            "spotguard_imds_invalid_events_total",
            "Entries of otherwise valid IMDS documents that could not be read and were ignored.",
            registry=registry,
        )
        for kind in Kind:
            for source in Source:
                self.notices.labels(kind=kind.value, source=source.value)
        for outcome in IMDS_OUTCOMES:
            self.imds_requests.labels(outcome=outcome)
