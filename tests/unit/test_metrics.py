"""The metric catalogue on a fresh registry: names, types, fixed label sets, zero-initialised."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from spotguard import __version__
from spotguard.model import Kind, Source
from spotguard.observability.health import Health
from spotguard.observability.metrics import (
    ACTION_OUTCOMES,
    ACTIONS,
    DRAIN_OUTCOMES,
    IMDS_OUTCOMES,
    QUEUE_MESSAGE_OUTCOMES,
    RECOVERY_OUTCOMES,
    Metrics,
)

KINDS = tuple(k.value for k in Kind)
SOURCES = tuple(s.value for s in Source)

#: family name (as the text parser reports it) → (type, label names)
CATALOGUE: dict[str, tuple[str, tuple[str, ...]]] = {
    "spotguard_notices": ("counter", ("kind", "source")),
    "spotguard_drains": ("counter", ("kind", "outcome")),
    "spotguard_actions": ("counter", ("action", "outcome")),
    "spotguard_notice_to_action_seconds": ("histogram", ("action",)),
    "spotguard_drain_duration_seconds": ("histogram", ()),
    "spotguard_deadline_margin_seconds": ("histogram", ()),
    "spotguard_deadline_missed_seconds": ("histogram", ()),
    "spotguard_checkpoint_duration_seconds": ("histogram", ()),
    "spotguard_imds_requests": ("counter", ("outcome",)),
    "spotguard_imds_request_duration_seconds": ("histogram", ()),
    "spotguard_imds_last_success_timestamp_seconds": ("gauge", ()),
    "spotguard_imds_invalid_events": ("counter", ()),
    "spotguard_imds_blind": ("gauge", ()),
    "spotguard_active_notices": ("gauge", ("kind",)),
    "spotguard_notice_deadline_timestamp_seconds": ("gauge", ("kind",)),
    "spotguard_node_info": ("gauge", ("nodepool", "vm_size", "priority", "cluster")),
    "spotguard_build_info": ("gauge", ("version",)),
    "spotguard_queue_messages": ("counter", ("outcome",)),
    "spotguard_queue_recoveries": ("counter", ("outcome",)),
    "spotguard_queue_leader": ("gauge", ()),
    "spotguard_fleet_evictions": ("counter", ("cluster", "nodepool")),
}

#: label → every value it may take (node_info's values come from the node and are not fixed)
FIXED_VALUES: dict[str, set[str]] = {
    "kind": set(KINDS),
    "source": set(SOURCES),
    "action": set(ACTIONS),
    "outcome": set(ACTION_OUTCOMES)
    | set(DRAIN_OUTCOMES)
    | set(IMDS_OUTCOMES)
    | set(QUEUE_MESSAGE_OUTCOMES)
    | set(RECOVERY_OUTCOMES),
    "version": {__version__},
}

#: every labelled series that must exist at zero on a fresh registry
ZERO_SERIES: list[tuple[str, dict[str, str]]] = [
    *(
        ("spotguard_notices_total", {"kind": k, "source": s})
        for k, s in itertools.product(KINDS, SOURCES)
    ),
    *(
        ("spotguard_drains_total", {"kind": k, "outcome": o})
        for k, o in itertools.product(KINDS, DRAIN_OUTCOMES)
    ),
    *(
        ("spotguard_actions_total", {"action": a, "outcome": o})
        for a, o in itertools.product(ACTIONS, ACTION_OUTCOMES)
    ),
    *(("spotguard_notice_to_action_seconds_count", {"action": a}) for a in ACTIONS),
    *(("spotguard_imds_requests_total", {"outcome": o}) for o in IMDS_OUTCOMES),
    *(("spotguard_active_notices", {"kind": k}) for k in KINDS),
    *(("spotguard_queue_messages_total", {"outcome": o}) for o in QUEUE_MESSAGE_OUTCOMES),
    *(("spotguard_queue_recoveries_total", {"outcome": o}) for o in RECOVERY_OUTCOMES),
]


def families(metrics: Metrics) -> dict[str, Metric]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_family_of_the_catalogue_is_exposed_with_its_type_and_labels() -> None:
    metrics = Metrics(CollectorRegistry())
    text = generate_latest(metrics.registry).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, labels) in CATALOGUE.items():
        assert name in parsed, name
        family = parsed[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(labels), (name, sample)
    # prometheus_client adds *_created gauges in the text format; nothing else is exposed.
    extra = {n for n in parsed if not n.endswith("_created")} - set(CATALOGUE)
    assert extra == set()


def test_every_labelled_series_exists_at_zero_on_a_fresh_registry() -> None:
    metrics = Metrics(CollectorRegistry())
    for name, labels in ZERO_SERIES:
        assert value(metrics, name, **labels) == 0.0, (name, labels)
    for action in ACTIONS:
        inf = value(metrics, "spotguard_notice_to_action_seconds_bucket", action=action, le="+Inf")
        assert inf == 0.0
        assert value(metrics, "spotguard_notice_to_action_seconds_sum", action=action) == 0.0
    assert value(metrics, "spotguard_imds_invalid_events_total") == 0.0
    assert value(metrics, "spotguard_imds_blind") == 0.0
    assert value(metrics, "spotguard_build_info", version=__version__) == 1.0


def test_label_values_come_only_from_the_fixed_sets() -> None:
    metrics = Metrics(CollectorRegistry())
    for family in families(metrics).values():
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                if label == "le":
                    continue
                assert label_value in FIXED_VALUES[label], (sample.name, label, label_value)


def test_node_info_and_the_deadline_gauge_are_absent_until_known() -> None:
    metrics = Metrics(CollectorRegistry())
    parsed = families(metrics)
    assert parsed["spotguard_node_info"].samples == []
    assert parsed["spotguard_notice_deadline_timestamp_seconds"].samples == []
    assert parsed["spotguard_fleet_evictions"].samples == []


def test_fleet_evictions_start_at_zero_for_the_known_pools_and_count_new_ones() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.fleet_pools("aks-ml", ["spot", "system"])

    def fleet(pool: str) -> float | None:
        return value(metrics, "spotguard_fleet_evictions_total", cluster="aks-ml", nodepool=pool)

    for pool in ("spot", "system", "unknown"):
        assert fleet(pool) == 0
    metrics.fleet_eviction("aks-ml", "spot")
    metrics.fleet_eviction("aks-ml", "")  # the node is gone and so is its pool
    metrics.fleet_eviction("aks-ml", "gpu")
    assert (fleet("spot"), fleet("unknown"), fleet("gpu"), fleet("system")) == (1, 1, 1, 0)


def test_queue_helpers_count_the_right_series() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.queue_message("dead_lettered")
    metrics.queue_recovery("tainted")
    assert value(metrics, "spotguard_queue_messages_total", outcome="dead_lettered") == 1.0
    assert value(metrics, "spotguard_queue_messages_total", outcome="completed") == 0.0
    assert value(metrics, "spotguard_queue_recoveries_total", outcome="tainted") == 1.0
    with pytest.raises(ValueError, match="not one of"):
        metrics.queue_message("deferred")
    with pytest.raises(ValueError, match="not one of"):
        metrics.queue_recovery("cordoned")


def test_the_openmetrics_exposition_parses_too() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.action("cordon", "success")
    text = generate_openmetrics(metrics.registry).decode()
    assert text.endswith("# EOF\n")
    parsed = {f.name: f for f in parse_openmetrics(text)}
    assert parsed["spotguard_actions"].type == "counter"
    assert {s.name for s in parsed["spotguard_notice_to_action_seconds"].samples} >= {
        "spotguard_notice_to_action_seconds_bucket",
        "spotguard_notice_to_action_seconds_count",
    }


def test_each_instance_has_its_own_registry_and_the_global_one_is_untouched() -> None:
    before = {m.name for m in REGISTRY.collect()}
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    first.action("evict", "success")
    assert value(first, "spotguard_actions_total", action="evict", outcome="success") == 1.0
    assert value(second, "spotguard_actions_total", action="evict", outcome="success") == 0.0
    assert {m.name for m in REGISTRY.collect()} == before


def test_helpers_count_and_observe_the_right_series() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.notice_seen(Kind.PREEMPT, Source.IMDS)
    metrics.action("cordon", "success")
    metrics.action("evict", "error")
    metrics.notice_to_action("cordon", 0.3)
    metrics.drain_finished(Kind.PREEMPT, "drained", 12.0)
    metrics.checkpoint_finished(4.0)

    assert value(metrics, "spotguard_notices_total", kind="preempt", source="imds") == 1.0
    assert value(metrics, "spotguard_notices_total", kind="preempt", source="drill") == 0.0
    assert value(metrics, "spotguard_actions_total", action="cordon", outcome="success") == 1.0
    assert value(metrics, "spotguard_actions_total", action="evict", outcome="error") == 1.0
    assert (
        value(metrics, "spotguard_notice_to_action_seconds_bucket", action="cordon", le="0.5")
        == 1.0
    )
    assert (
        value(metrics, "spotguard_notice_to_action_seconds_bucket", action="cordon", le="0.25")
        == 0.0
    )
    assert value(metrics, "spotguard_drains_total", kind="preempt", outcome="drained") == 1.0
    assert value(metrics, "spotguard_drain_duration_seconds_sum") == 12.0
    assert value(metrics, "spotguard_checkpoint_duration_seconds_count") == 1.0


def test_deadline_margin_goes_to_margin_when_in_time_and_to_missed_when_late() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.deadline_margin(7.5)
    metrics.deadline_margin(0.0)
    metrics.deadline_margin(-1.25)
    assert value(metrics, "spotguard_deadline_margin_seconds_count") == 2.0
    assert value(metrics, "spotguard_deadline_margin_seconds_sum") == 7.5
    assert value(metrics, "spotguard_deadline_missed_seconds_count") == 1.0
    assert value(metrics, "spotguard_deadline_missed_seconds_sum") == 1.25


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("action", ("drain", "success")),  # not an action of the catalogue
        ("action", ("cordon", "ok")),  # an IMDS outcome, not an action outcome
        ("notice_to_action", ("node-3", 1.0)),
        ("drain_finished", (Kind.PREEMPT, "success", 1.0)),
        ("drain_finished", ("spot", "drained", 1.0)),
        ("notice_seen", ("preempt", "queue")),
        ("set_active", ("maintenance", 1, None)),
    ],
)
def test_values_outside_the_fixed_sets_are_refused_and_create_no_series(
    call: str, args: tuple[object, ...]
) -> None:
    metrics = Metrics(CollectorRegistry())
    before = generate_latest(metrics.registry)
    with pytest.raises(ValueError):  # noqa: PT011 -- the message names the value; any is fine
        getattr(metrics, call)(*args)
    assert generate_latest(metrics.registry) == before


def test_helpers_accept_enum_members_as_well_as_strings() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.notice_seen("reboot", "drill")  # type: ignore[arg-type]
    metrics.set_active("reboot", 1, None)  # type: ignore[arg-type]
    assert value(metrics, "spotguard_notices_total", kind="reboot", source="drill") == 1.0
    assert value(metrics, "spotguard_active_notices", kind="reboot") == 1.0


def test_set_active_sets_the_count_and_the_earliest_deadline_and_removes_it_when_none() -> None:
    metrics = Metrics(CollectorRegistry())
    deadline = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
    metrics.set_active(Kind.PREEMPT, 2, deadline)
    assert value(metrics, "spotguard_active_notices", kind="preempt") == 2.0
    assert (
        value(metrics, "spotguard_notice_deadline_timestamp_seconds", kind="preempt")
        == deadline.timestamp()
    )
    assert value(metrics, "spotguard_notice_deadline_timestamp_seconds", kind="reboot") is None

    metrics.set_active(Kind.PREEMPT, 0, None)
    assert value(metrics, "spotguard_active_notices", kind="preempt") == 0.0
    assert value(metrics, "spotguard_notice_deadline_timestamp_seconds", kind="preempt") is None
    metrics.set_active(Kind.PREEMPT, 0, None)  # removing what is not there is fine
    # a count of zero never leaves a deadline behind, whatever the caller passes
    metrics.set_active(Kind.REBOOT, 0, deadline)
    assert value(metrics, "spotguard_notice_deadline_timestamp_seconds", kind="reboot") is None


def test_node_info_holds_one_series_whatever_is_set_before() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.node_info(nodepool="spot1", vm_size="x", priority="spot", cluster="c")
    metrics.node_info(nodepool="spot1", vm_size="Standard_D8s_v5", priority="spot", cluster="prod")
    samples = families(metrics)["spotguard_node_info"].samples
    assert [(s.labels, s.value) for s in samples] == [
        (
            {
                "nodepool": "spot1",
                "vm_size": "Standard_D8s_v5",
                "priority": "spot",
                "cluster": "prod",
            },
            1.0,
        )
    ]


def test_build_info_carries_one_version() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.build_info("9.9.9")
    samples = families(metrics)["spotguard_build_info"].samples
    assert [(s.labels, s.value) for s in samples] == [({"version": "9.9.9"}, 1.0)]


async def answers() -> bool:
    return True


class FakeLoopClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_blind_gauge_is_computed_at_scrape_time_from_the_last_success() -> None:
    clock = FakeLoopClock()
    last: list[float | None] = [None]
    health = Health(blind_after=30.0, api_check=answers, now=clock)
    health.imds_last_success = lambda: last[0]
    metrics = Metrics(CollectorRegistry())
    metrics.track_imds_blind(health.imds_blind)

    # Before the first answer, silence counts from when watching started.
    clock.now += 30.0
    assert value(metrics, "spotguard_imds_blind") == 0.0
    clock.now += 0.5
    assert value(metrics, "spotguard_imds_blind") == 1.0

    last[0] = clock.now
    assert value(metrics, "spotguard_imds_blind") == 0.0
    clock.now += 30.0  # exactly the threshold is not yet blind
    assert value(metrics, "spotguard_imds_blind") == 0.0
    clock.now += 0.001
    assert value(metrics, "spotguard_imds_blind") == 1.0
    assert health.imds_silent_for() == pytest.approx(30.001)
