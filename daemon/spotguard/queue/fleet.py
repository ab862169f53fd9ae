"""``spotguard_fleet_evictions_total``: each spot eviction counted once, whoever reports it.

Two sources tell queue mode that a VM of this cluster was evicted:

- Azure, after the fact: a ``VirtualMachinePreempted`` Resource Health event through Event Grid
  (``RecoveryHandler``; the eviction time is the event's ``occurredTime``);
- the VM's own agent, before it: an ``io.spotguard.notice.v1`` message of kind ``preempt`` on
  queue mode's subscription of the notices topic (``queue.notices``; the eviction time is the
  notice's ``not_before``, else its deadline, else the message's time).

Both, either, or (an agent that was not running, a notice lost) only Event Grid report an
eviction, in either order, and Service Bus may deliver each of them more than once (a lock that
expired, a failover before settlement). The rule: **one eviction per VM per window**. An eviction
of VM *v* at time *t* is counted only if no eviction of *v* within ``WINDOW`` (15 min) of *t* is
on record; the notice's ``NotBefore`` and Azure's ``occurredTime`` for one eviction are seconds
apart, while one VM cannot be preempted, restarted and preempted again within minutes.

The record is cluster state, not memory: the ConfigMap ``spotguard-fleet-evictions`` in queue
mode's namespace (key ``evictions``: ``{"v": 1, "evictions": [{vm, evicted, source, id, nodepool,
node, at}, ...]}``). A claim reads it, decides with ``plan_claim`` (pure), and writes it back with
the ``resourceVersion`` it read; a 409 means another writer (the other consumer, a replica during
a failover) got there first, so the claim is decided again on the fresh object. The counter is
incremented only after the write succeeded: a failed write raises ``KubeError``, the message is
abandoned, and its redelivery claims again. A crash between the write and the increment loses
that one increment (the counter lives in a process anyway); it never counts twice.

Why not the Node's ``spotguard.io/recovery`` annotation: the node is often gone by the time the
second report arrives. AKS's default spot eviction policy is *Delete*: the notice comes ~30 s
before the eviction, while the node exists; Event Grid's event comes after it, often after the
cloud node controller has deleted the node (the VM is gone), and with it any record on it. With
the record on the node, a gone node leaves two bad choices: Event Grid counts it (twice, in the
common case above, where the notice counted first) or does not (never, for a VM whose agent sent
no notice: the backstop Event Grid is there for). The ledger is keyed by VM, so it works the
same with the node there or gone, and it also makes a redelivered Event Grid event of a gone
node count once (before, each delivery counted).

Bounds: entries whose eviction is older than ``RETENTION`` (24 h) are dropped, and at most
``MAX_ENTRIES`` are kept (the newest). An eviction reported more than ``RETENTION - WINDOW`` after
it happened is not counted (a record that would match it may already be dropped: counting it
could count it twice), and logged. In dry-run nothing is written, so a dry-run queue mode may
count an eviction reported twice twice.
"""

from __future__ import annotations

import asyncio
import enum
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from spotguard.clock import Clock, rfc3339
from spotguard.kube.client import JSON, KubeClient, KubeError
from spotguard.kube.nodes import CONFLICT_BUDGET
from spotguard.observability.metrics import UNKNOWN_NODEPOOL, Metrics

Logger = structlog.typing.FilteringBoundLogger

LEDGER_NAME = "spotguard-fleet-evictions"
LEDGER_KEY = "evictions"
LEDGER_VERSION = 1
#: Two reports of one VM's eviction this close together are the same eviction.
WINDOW = timedelta(minutes=15)
#: How long an eviction stays on record (Event Grid retries delivery for 24 h).
RETENTION = timedelta(hours=24)
#: Entries kept at most, the newest (about 200 bytes each; a ConfigMap holds 1 MiB).
MAX_ENTRIES = 2000


class Source(enum.StrEnum):
    """Who reported an eviction."""

    EVENT_GRID = "eventgrid"
    NOTICE = "notice"


class Decision(enum.StrEnum):
    COUNTED = "counted"  # recorded now, and counted
    DUPLICATE = "duplicate"  # the ledger has this VM's eviction within the window
    TOO_OLD = "too_old"  # older than the ledger remembers: not counted


@dataclass(frozen=True, slots=True)
class Eviction:
    """One report of a VM's eviction."""

    vm: str  # as IMDS names it: <scale set>_<instance>, or the VM's name
    evicted: datetime
    source: Source
    source_id: str  # the Event Grid event's id, or the notice message's CloudEvent id
    nodepool: str
    node: str = ""


@dataclass(frozen=True, slots=True)
class Entry:
    vm: str
    evicted: datetime
    source: str
    id: str
    nodepool: str
    node: str
    at: str  # RFC 3339; when it was counted

    def to_json(self) -> dict[str, str]:
        return {
            "vm": self.vm,
            "evicted": rfc3339(self.evicted) or "",
            "source": self.source,
            "id": self.id,
            "nodepool": self.nodepool,
            "node": self.node,
            "at": self.at,
        }

    def matches(self, vm: str, evicted: datetime, window: timedelta) -> bool:
        return self.vm.casefold() == vm.casefold() and abs(self.evicted - evicted) <= window


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    decision: Decision
    #: the ledger to write (COUNTED only)
    entries: tuple[Entry, ...] | None = None
    #: the entry that makes this report a duplicate
    match: Entry | None = None


def plan_claim(
    entries: Iterable[Entry],
    eviction: Eviction,
    *,
    now: datetime,
    window: timedelta = WINDOW,
    retention: timedelta = RETENTION,
    max_entries: int = MAX_ENTRIES,
) -> ClaimPlan:
    """Whether ``eviction`` is new, and the ledger with it (pruned) when it is."""
    kept = [e for e in entries if e.evicted >= now - retention]
    match = next((e for e in kept if e.matches(eviction.vm, eviction.evicted, window)), None)
    if match is not None:
        return ClaimPlan(Decision.DUPLICATE, match=match)
    if eviction.evicted < now - retention + window:
        return ClaimPlan(Decision.TOO_OLD)
    entry = Entry(
        vm=eviction.vm,
        evicted=eviction.evicted,
        source=eviction.source.value,
        id=eviction.source_id,
        nodepool=eviction.nodepool,
        node=eviction.node,
        at=rfc3339(now) or "",
    )
    # The oldest others make room; the new entry always stays (it is what dedupes its redelivery).
    others = sorted(kept, key=lambda e: e.evicted)[max(0, len(kept) - max_entries + 1) :]
    ordered = sorted([*others, entry], key=lambda e: e.evicted)
    return ClaimPlan(Decision.COUNTED, entries=tuple(ordered))


def parse_ledger(text: str | None, log: Logger | None = None) -> tuple[Entry, ...]:
    """The ledger's entries; an unreadable ledger or entry is skipped, and logged (it can only
    make an eviction count twice, never stop queue mode)."""
    if not text:
        return ()
    try:
        raw = json.loads(text)["evictions"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raw = exc
    if not isinstance(raw, list):
        if log is not None:
            log.warning("fleet_ledger_unreadable", error=repr(raw)[:200])
        return ()
    entries = []
    for item in raw:
        try:
            entries.append(_entry(item))
        except (ValueError, KeyError, TypeError) as exc:
            if log is not None:
                log.warning("fleet_ledger_entry_unreadable", error=repr(exc)[:200])
    return tuple(entries)


def _entry(item: Any) -> Entry:
    evicted = datetime.fromisoformat(str(item["evicted"]))
    if evicted.tzinfo is None:
        raise ValueError("evicted has no offset")
    return Entry(
        vm=str(item["vm"]),
        evicted=evicted,
        source=str(item["source"]),
        id=str(item["id"]),
        nodepool=str(item.get("nodepool", "")),
        node=str(item.get("node", "")),
        at=str(item.get("at", "")),
    )


def render_ledger(entries: Iterable[Entry]) -> str:
    return json.dumps(
        {"v": LEDGER_VERSION, "evictions": [e.to_json() for e in entries]},
        separators=(",", ":"),
    )


class FleetCounter:
    """Claims evictions in the ledger and counts the new ones in
    ``spotguard_fleet_evictions_total{cluster,nodepool}``."""

    def __init__(
        self,
        *,
        kube: KubeClient,
        namespace: str,
        cluster: str,
        clock: Clock,
        metrics: Metrics,
        log: Logger,
        dry_run: bool,
        name: str = LEDGER_NAME,
        rng: random.Random | None = None,
        conflict_budget: float = CONFLICT_BUDGET,
    ) -> None:
        if not namespace:
            raise ValueError("the fleet ledger needs the pod's namespace")
        self._kube = kube
        self._clock = clock
        self._metrics = metrics
        self._log = log
        self._dry_run = dry_run
        self._rng = rng or random.Random()
        self._conflict_budget = conflict_budget
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self._collection = f"/api/v1/namespaces/{namespace}/configmaps"
        self._path = f"{self._collection}/{name}"

    async def count(self, eviction: Eviction, *, cluster: str | None = None) -> Decision:
        """Count ``eviction`` unless the ledger has it. Raises ``KubeError``."""
        cluster = self.cluster or cluster or ""
        nodepool = eviction.nodepool or UNKNOWN_NODEPOOL
        plan = await self._claim(eviction)
        log = self._log.bind(
            vm=eviction.vm,
            evicted=rfc3339(eviction.evicted),
            source=eviction.source.value,
            source_id=eviction.source_id,
            node=eviction.node or None,
        )
        if plan.decision is Decision.COUNTED:
            self._metrics.fleet_eviction(cluster, nodepool)
            log.info(
                "fleet_eviction_counted",
                cluster=cluster,
                nodepool=nodepool,
                dry_run=self._dry_run,
            )
        elif plan.decision is Decision.DUPLICATE:
            assert plan.match is not None
            log.info(
                "fleet_eviction_duplicate",
                counted_by=plan.match.source,
                counted_id=plan.match.id,
                counted_evicted=rfc3339(plan.match.evicted),
            )
        else:
            log.warning("fleet_eviction_too_old", retention_s=RETENTION.total_seconds())
        return plan.decision

    async def entries(self) -> tuple[Entry, ...]:
        """The ledger as it is (for tests and tools). Raises ``KubeError``."""
        current = await self._read()
        return parse_ledger(_text(current), self._log) if current is not None else ()

    # --- internals ------------------------------------------------------------------------

    async def _claim(self, eviction: Eviction) -> ClaimPlan:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._conflict_budget
        attempt = 0
        while True:
            current = await self._read()
            entries = parse_ledger(_text(current), self._log) if current is not None else ()
            plan = plan_claim(entries, eviction, now=self._clock.now())
            if plan.decision is not Decision.COUNTED:
                return plan
            assert plan.entries is not None
            if self._dry_run:
                self._log.info(
                    "dry_run_write", action="fleet_ledger", verb="update", vm=eviction.vm
                )
                return plan
            try:
                await self._write(current, plan.entries)
            except KubeError as exc:
                if exc.status != 409 or loop.time() >= give_up:
                    raise
                attempt += 1
                self._log.debug("fleet_ledger_conflict", attempt=attempt)
                await asyncio.sleep(self._rng.uniform(0, min(0.2, 0.01 * attempt)))
                continue
            return plan

    async def _read(self) -> JSON | None:
        try:
            return await self._kube.request("GET", self._path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def _write(self, current: JSON | None, entries: tuple[Entry, ...]) -> None:
        data = {LEDGER_KEY: render_ledger(entries)}
        if current is None:
            body: JSON = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "labels": {"app.kubernetes.io/name": "spotguard"},
                },
                "data": data,
            }
            # 409 AlreadyExists: another writer created it first; the claim is decided again.
            await self._kube.request("POST", self._collection, body=body)
            return
        # The whole object with the resourceVersion that was read: 409 if anyone wrote since.
        await self._kube.request("PUT", self._path, body={**current, "data": data})


def _text(configmap: Mapping[str, Any] | None) -> str | None:
    data = (configmap or {}).get("data") or {}
    value = data.get(LEDGER_KEY) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None
