"""The metric catalogue (DESIGN.md, Contracts → Metrics), on a registry the caller owns.

Labels come from small fixed sets and every labelled series exists at zero from the start, so a
rate() over a preemption that happened in the first scrape still works. Node, pod and namespace
come from Prometheus target labels, never from here. Three deliberate exceptions to "exists at
zero": ``spotguard_node_info`` appears once the node's identity is known,
``spotguard_notice_deadline_timestamp_seconds{kind}`` exists only while a notice of that kind is
active (see ``set_active``), and queue mode's ``spotguard_fleet_evictions_total{cluster,nodepool}``
starts at zero once queue mode has read the cluster's node pools (see ``fleet_pools``).

The helpers validate label values against the fixed sets and raise ValueError for anything else:
an unknown value is a programming error, and letting it through would grow a new series.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from spotguard import __version__
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
ACTIONS = (
    "cordon",
    "taint",
    "checkpoint",
    "evict",
    "delete",
    "publish",
    "alert",
    "acknowledge",
    "uncordon",
)
ACTION_OUTCOMES = ("success", "error", "skipped")
#: The values of ``spotguard.kube.drain.DrainResult``.
DRAIN_OUTCOMES = ("drained", "partial", "failed")
#: What queue mode did with a Service Bus message.
QUEUE_MESSAGE_OUTCOMES = ("completed", "abandoned", "dead_lettered")
#: The values of ``spotguard.queue.recovery.Outcome``.
RECOVERY_OUTCOMES = (
    "tainted",
    "already_done",
    "not_ready_yet",
    "recovered",
    "node_missing",
    "not_in_cluster",
    "ignored",
    "untainted",
)
#: ``spotguard_fleet_evictions_total{nodepool}`` of a VM whose node is gone and whose pool is
#: unknown.
UNKNOWN_NODEPOOL = "unknown"

# IMDS answers in single milliseconds; the long tail is the first (enabling) request.
_IMDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 120.0)
# From first sight of a notice: cordon/taint in well under a second, evictions and checkpoints
# within the 30 s Preempt window, acknowledge and uncordon after a reboot minutes later.
_SINCE_NOTICE_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0,
    60.0, 300.0, 1800.0,
)  # fmt: skip
# A drain has to fit in the notice (30 s for Preempt); longer ones only happen for kinds with
# longer notices or when pods refuse to leave.
_DRAIN_BUCKETS = (
    0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 45.0, 60.0, 120.0, 300.0, 900.0,
)  # fmt: skip
# Margin left at the deadline: the interesting part is the close calls near zero.
_MARGIN_BUCKETS = (
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 60.0, 300.0,
)  # fmt: skip
# How late: a fraction of a second is a near miss, tens of seconds means the VM was gone.
_MISSED_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
# A checkpoint must finish before notice deadline - stop budget (≈25 s for Preempt).
_CHECKPOINT_BUCKETS = (
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0, 60.0, 120.0,
)  # fmt: skip


def _check(value: str, allowed: tuple[str, ...], label: str) -> str:
    if value not in allowed:
        raise ValueError(f"metric label {label}={value!r} is not one of {', '.join(allowed)}")
    return str(value)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.notices = Counter(
            "spotguard_notices_total",
            "Scheduled events for this VM seen for the first time.",
            ["kind", "source"],
            registry=registry,
        )
        self.drains = Counter(
            "spotguard_drains_total",
            "Drains finished, by kind of notice and result.",
            ["kind", "outcome"],
            registry=registry,
        )
        self.actions = Counter(
            "spotguard_actions_total",
            "Actions taken on behalf of a notice, by result.",
            ["action", "outcome"],
            registry=registry,
        )
        self.notice_to_action_seconds = Histogram(
            "spotguard_notice_to_action_seconds",
            "Time from first sight of a notice to an action's success.",
            ["action"],
            buckets=_SINCE_NOTICE_BUCKETS,
            registry=registry,
        )
        self.drain_duration_seconds = Histogram(
            "spotguard_drain_duration_seconds",
            "Duration of drains, from start to the last pod gone (or given up).",
            buckets=_DRAIN_BUCKETS,
            registry=registry,
        )
        self.deadline_margin_seconds = Histogram(
            "spotguard_deadline_margin_seconds",
            "Time left before the notice deadline when a drain finished in time.",
            buckets=_MARGIN_BUCKETS,
            registry=registry,
        )
        self.deadline_missed_seconds = Histogram(
            "spotguard_deadline_missed_seconds",
            "How late a drain ended with pods still on the node (0: it ended before the deadline "
            "because nothing more could move them, so the miss was certain).",
            buckets=_MISSED_BUCKETS,
            registry=registry,
        )
        self.checkpoint_duration_seconds = Histogram(
            "spotguard_checkpoint_duration_seconds",
            "Time from a checkpoint request to the step's answer.",
            buckets=_CHECKPOINT_BUCKETS,
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
        self.imds_blind = Gauge(
            "spotguard_imds_blind",
            "1 while IMDS has not answered for longer than the blind threshold.",
            registry=registry,
        )
        self.active_notices = Gauge(
            "spotguard_active_notices",
            "Notices being handled (present in the node's annotation), by kind.",
            ["kind"],
            registry=registry,
        )
        self.notice_deadline = Gauge(
            "spotguard_notice_deadline_timestamp_seconds",
            "Earliest deadline of the active notices of a kind (Unix time); absent when none.",
            ["kind"],
            registry=registry,
        )
        self._node_info = Gauge(
            "spotguard_node_info",
            "Identity of the node this agent runs on (value 1).",
            ["nodepool", "vm_size", "priority", "cluster"],
            registry=registry,
        )
        self._build_info = Gauge(
            "spotguard_build_info",
            "The running spotguard version (value 1).",
            ["version"],
            registry=registry,
        )
        for kind in Kind:
            for source in Source:
                self.notices.labels(kind=kind.value, source=source.value)
            for drain_outcome in DRAIN_OUTCOMES:
                self.drains.labels(kind=kind.value, outcome=drain_outcome)
            self.active_notices.labels(kind=kind.value)
        for action in ACTIONS:
            for action_outcome in ACTION_OUTCOMES:
                self.actions.labels(action=action, outcome=action_outcome)
            self.notice_to_action_seconds.labels(action=action)
        for imds_outcome in IMDS_OUTCOMES:
            self.imds_requests.labels(outcome=imds_outcome)
        self.queue_messages = Counter(
            "spotguard_queue_messages_total",
            "Queue mode: Service Bus messages settled, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.queue_recoveries = Counter(
            "spotguard_queue_recoveries_total",
            "Queue mode: what handling an Event Grid event (or reconciling a node) came to.",
            ["outcome"],
            registry=registry,
        )
        self.queue_leader = Gauge(
            "spotguard_queue_leader",
            "Queue mode: 1 while this replica holds the leader lease.",
            registry=registry,
        )
        self.fleet_evictions = Counter(
            "spotguard_fleet_evictions_total",
            "Queue mode: spot evictions of this cluster's VMs, reported by Azure (Event Grid) or "
            "by the agents' Preempt notices, each eviction counted once.",
            ["cluster", "nodepool"],
            registry=registry,
        )
        for message_outcome in QUEUE_MESSAGE_OUTCOMES:
            self.queue_messages.labels(outcome=message_outcome)
        for recovery_outcome in RECOVERY_OUTCOMES:
            self.queue_recoveries.labels(outcome=recovery_outcome)
        self.build_info(__version__)

    # --- helpers the responder calls ------------------------------------------------------

    def notice_seen(self, kind: Kind, source: Source) -> None:
        self.notices.labels(kind=Kind(kind).value, source=Source(source).value).inc()

    def action(self, action: str, outcome: str) -> None:
        """``action`` from ACTIONS ended with ``outcome`` from ACTION_OUTCOMES."""
        self.actions.labels(
            action=_check(action, ACTIONS, "action"),
            outcome=_check(outcome, ACTION_OUTCOMES, "outcome"),
        ).inc()

    def notice_to_action(self, action: str, seconds: float) -> None:
        """``action`` succeeded ``seconds`` after the notice was first seen."""
        self.notice_to_action_seconds.labels(action=_check(action, ACTIONS, "action")).observe(
            seconds
        )

    def drain_finished(self, kind: Kind, outcome: str, seconds: float) -> None:
        """A drain for ``kind`` ended with ``outcome`` (DRAIN_OUTCOMES) after ``seconds``."""
        self.drains.labels(
            kind=Kind(kind).value, outcome=_check(outcome, DRAIN_OUTCOMES, "outcome")
        ).inc()
        self.drain_duration_seconds.observe(seconds)

    def deadline_margin(self, seconds_left: float) -> None:
        """Time left before the notice deadline when the work finished; negative when late."""
        if seconds_left >= 0:
            self.deadline_margin_seconds.observe(seconds_left)
        else:
            self.deadline_missed_seconds.observe(-seconds_left)

    def checkpoint_finished(self, seconds: float) -> None:
        self.checkpoint_duration_seconds.observe(seconds)

    def set_active(self, kind: Kind, count: int, earliest_deadline: datetime | None) -> None:
        """``count`` active notices of ``kind``, the earliest due at ``earliest_deadline``.

        With no deadline the series is removed rather than set to 0, so that
        ``spotguard_notice_deadline_timestamp_seconds - time()`` is "seconds left" for real
        notices only: a 0 would read as a deadline 56 years ago and fire every "deadline
        passed" alert on every idle node. Prometheus marks the removed series stale at the next
        scrape. ``spotguard_active_notices`` (always present) says whether anything is active.
        """
        label = Kind(kind).value
        self.active_notices.labels(kind=label).set(count)
        if earliest_deadline is None or count == 0:
            with contextlib.suppress(KeyError):  # not there: nothing was active
                self.notice_deadline.remove(label)
        else:
            self.notice_deadline.labels(kind=label).set(earliest_deadline.timestamp())

    def node_info(self, *, nodepool: str, vm_size: str, priority: str, cluster: str) -> None:
        """Once identity is known; at most one series, whatever was set before."""
        self._node_info.clear()
        self._node_info.labels(
            nodepool=nodepool, vm_size=vm_size, priority=priority, cluster=cluster
        ).set(1)

    def build_info(self, version: str) -> None:
        """Set to this package's version from the start; for a different build string."""
        self._build_info.clear()
        self._build_info.labels(version=version).set(1)

    def queue_message(self, outcome: str) -> None:
        """A message was settled with ``outcome`` from QUEUE_MESSAGE_OUTCOMES."""
        self.queue_messages.labels(outcome=_check(outcome, QUEUE_MESSAGE_OUTCOMES, "outcome")).inc()

    def queue_recovery(self, outcome: str) -> None:
        """Handling an event, or reconciling a node, came to ``outcome`` (RECOVERY_OUTCOMES)."""
        self.queue_recoveries.labels(outcome=_check(outcome, RECOVERY_OUTCOMES, "outcome")).inc()

    def fleet_pools(self, cluster: str, nodepools: Iterable[str]) -> None:
        """Create ``spotguard_fleet_evictions_total`` at zero for the pools known at start-up
        (and ``unknown``). The cluster and its pools are only known once queue mode has read
        the nodes, so these series appear then, not with the registry; pools seen later
        appear with their first eviction."""
        for nodepool in {*nodepools, UNKNOWN_NODEPOOL}:
            self.fleet_evictions.labels(cluster=cluster, nodepool=nodepool or UNKNOWN_NODEPOOL)

    def fleet_eviction(self, cluster: str, nodepool: str) -> None:
        self.fleet_evictions.labels(cluster=cluster, nodepool=nodepool or UNKNOWN_NODEPOOL).inc()

    def track_imds_blind(self, blind: Callable[[], bool]) -> None:
        """Compute ``spotguard_imds_blind`` at scrape time from ``blind`` (``Health.imds_blind``),
        so it turns 1 while the poller is stuck, without anything having to run to update it."""
        self.imds_blind.set_function(lambda: 1.0 if blind() else 0.0)
