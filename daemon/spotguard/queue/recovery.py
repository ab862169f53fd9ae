"""Queue mode's recovery: the out-of-service taint for a node whose VM Azure reports gone.

Azure tells queue mode, after the fact, that a VM was preempted or deallocated
(``FleetEvent``). Its node may linger: a spot pool with the *Deallocate* eviction policy keeps
the node object, NotReady, with its pods stuck Terminating and their volumes attached. The
taint ``node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`` (Kubernetes' non-graceful
node shutdown) lets Kubernetes force-delete those pods and detach their volumes so that
replacements start elsewhere. It is only safe on a node that is really down, so:

- the node must not have been Ready for ``not_ready_after`` (from the Ready condition's
  ``lastTransitionTime``, against the injected clock); a node still Ready means "retry later";
- a node Ready again since the event needs nothing (the VM came back before we got to it);
- a node that is gone needs nothing either (the *Delete* policy, or AKS removed it);
- when the VM comes back (Deallocate) and its node is Ready, ``reconcile`` removes the taint,
  but only a taint our annotation says we put there.

State lives on the node, never in memory: the annotation ``spotguard.io/recovery`` (``{"v": 1,
"taint_ours": bool, "history": [{event_id, vm, annotation, occurred, at, action}, ...]}``, the
last ``HISTORY_LIMIT`` entries) and the taint are written in one strategic-merge patch carrying
``metadata.resourceVersion``, redone on 409 against the fresh node. An event already in the
history is done: a redelivered message changes nothing.

``plan_eviction`` and ``plan_reconcile`` are the policy (pure functions of the event, the node
and the time); ``RecoveryHandler`` is the mechanism (find the node, write, count, log).

A ``VirtualMachinePreempted`` event of a VM of this cluster (tainted, Ready again, node gone,
or already done) is also a fleet eviction: it is claimed in the fleet ledger (``queue.fleet``),
which counts it unless a notice or an earlier delivery of it counted that eviction already.
"""

from __future__ import annotations

import asyncio
import enum
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from spotguard.clock import Clock, rfc3339
from spotguard.config import Taint
from spotguard.errors import IdentityError
from spotguard.kube.client import JSON, SMP, KubeClient, KubeError
from spotguard.kube.nodes import CONFLICT_BUDGET
from spotguard.observability.metrics import UNKNOWN_NODEPOOL, Metrics
from spotguard.queue.events import EventKind, FleetEvent
from spotguard.queue.fleet import Eviction, FleetCounter
from spotguard.queue.fleet import Source as Reporter
from spotguard.sources.identity import VmIdentity, parse_vm_resource_id

Logger = structlog.typing.FilteringBoundLogger

RECOVERY_ANNOTATION = "spotguard.io/recovery"
ANNOTATION_VERSION = 1
#: Entries kept in the annotation; a redelivery comes within minutes, never 20 events later.
HISTORY_LIMIT = 20
NODEPOOL_LABELS = ("kubernetes.azure.com/agentpool", "agentpool")
#: Nodes per page when listing them to find a VM's node.
LIST_PAGE = 500


class Outcome(enum.StrEnum):
    """What handling an event (or reconciling a node) came to. All but NOT_READY_YET are final:
    the consumer completes the message; NOT_READY_YET means "abandon, and see again later"."""

    TAINTED = "tainted"  # recorded on the node, which now has the taint
    ALREADY_DONE = "already_done"  # the node records this event already
    NOT_READY_YET = "not_ready_yet"  # the node is Ready, or not unready for long enough yet
    RECOVERED = "recovered"  # the node is Ready again since the event: recorded, nothing else
    NODE_MISSING = "node_missing"  # a VM of this cluster whose node is gone
    NOT_IN_CLUSTER = "not_in_cluster"  # a VM of no node of this cluster (another cluster's)
    IGNORED = "ignored"  # the event needs no action
    UNTAINTED = "untainted"  # reconcile: the node is Ready again and our taint is gone

    @property
    def final(self) -> bool:
        return self is not Outcome.NOT_READY_YET


#: Outcomes of a VirtualMachinePreempted event that mean "a VM of this cluster was evicted".
EVICTED = frozenset(
    {Outcome.TAINTED, Outcome.RECOVERED, Outcome.NODE_MISSING, Outcome.ALREADY_DONE}
)


class Step(enum.StrEnum):
    """The ``action`` of a history entry."""

    TAINTED = "tainted"  # we added the taint
    ALREADY_TAINTED = "already_tainted"  # the taint was there (ours from an earlier event, or not)
    NODE_READY = "node_ready"  # the node was Ready again: nothing to do
    UNTAINTED = "untainted"  # we removed our taint, the node being Ready


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    event_id: str
    vm: str
    annotation: str
    occurred: str  # RFC 3339; when Azure says it happened
    at: str  # RFC 3339; when spotguard acted
    action: Step

    def to_json(self) -> dict[str, str]:
        return {
            "event_id": self.event_id,
            "vm": self.vm,
            "annotation": self.annotation,
            "occurred": self.occurred,
            "at": self.at,
            "action": self.action.value,
        }


@dataclass(frozen=True, slots=True)
class RecoveryRecord:
    """The ``spotguard.io/recovery`` annotation."""

    taint_ours: bool = False
    history: tuple[HistoryEntry, ...] = ()

    def knows(self, event_id: str) -> bool:
        return any(e.event_id == event_id and e.action is not Step.UNTAINTED for e in self.history)

    def add(self, entry: HistoryEntry, *, taint_ours: bool) -> RecoveryRecord:
        return RecoveryRecord(taint_ours, (*self.history, entry)[-HISTORY_LIMIT:])


def parse_record(annotation: str | None, log: Logger | None = None) -> RecoveryRecord:
    """The annotation; an unreadable one counts as empty (and is logged): then the taint is not
    known to be ours, and is never removed by us."""
    if not annotation:
        return RecoveryRecord()
    try:
        data = json.loads(annotation)
        history = tuple(
            HistoryEntry(
                event_id=str(e["event_id"]),
                vm=str(e["vm"]),
                annotation=str(e["annotation"]),
                occurred=str(e["occurred"]),
                at=str(e["at"]),
                action=Step(e["action"]),
            )
            for e in data["history"]
        )
        return RecoveryRecord(taint_ours=data["taint_ours"] is True, history=history)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        if log is not None:
            log.warning("recovery_annotation_unreadable", error=repr(exc))
        return RecoveryRecord()


def render_record(record: RecoveryRecord) -> str:
    return json.dumps(
        {
            "v": ANNOTATION_VERSION,
            "taint_ours": record.taint_ours,
            "history": [e.to_json() for e in record.history],
        },
        sort_keys=True,
        separators=(",", ":"),
    )


# --- what the policy sees of a node ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeFacts:
    name: str
    resource_version: str
    provider_id: str
    nodepool: str
    taints: tuple[JSON, ...]
    ready: bool | None  # the Ready condition is True; None when the node has none
    ready_changed: datetime | None  # its lastTransitionTime
    record: RecoveryRecord


def node_facts(node: JSON, log: Logger | None = None) -> NodeFacts:
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    ready: bool | None = None
    changed: datetime | None = None
    for condition in (node.get("status") or {}).get("conditions") or ():
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            changed = _k8s_time(condition.get("lastTransitionTime"))
    return NodeFacts(
        name=str(metadata.get("name", "")),
        resource_version=str(metadata.get("resourceVersion", "")),
        provider_id=str(spec.get("providerID", "")),
        nodepool=next((str(labels[k]) for k in NODEPOOL_LABELS if labels.get(k)), ""),
        taints=tuple(t for t in spec.get("taints") or () if isinstance(t, dict)),
        ready=ready,
        ready_changed=changed,
        record=parse_record(annotations.get(RECOVERY_ANNOTATION), log),
    )


def _k8s_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def is_taint(candidate: JSON, taint: Taint) -> bool:
    """Kubernetes keys taints by (key, effect); the value does not make another taint."""
    return candidate.get("key") == taint.key and candidate.get("effect") == taint.effect


def has_taint(taints: tuple[JSON, ...], taint: Taint) -> bool:
    return any(is_taint(t, taint) for t in taints)


# --- policy -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome, and the node as it should be: ``taints``/``record`` None = unchanged."""

    outcome: Outcome
    retry_after: float | None = None
    taints: tuple[JSON, ...] | None = None
    record: RecoveryRecord | None = None
    detail: str = ""


def plan_eviction(
    event: FleetEvent, node: NodeFacts, *, now: datetime, not_ready_after: float, taint: Taint
) -> Plan:
    """What to do on ``node`` for a relevant ``event`` about its VM."""
    if not event.relevant:
        return Plan(Outcome.IGNORED, detail=event.ignore_reason)
    if node.record.knows(event.event_id):
        return Plan(Outcome.ALREADY_DONE, detail="the node records this event")

    def entry(step: Step) -> HistoryEntry:
        return HistoryEntry(
            event_id=event.event_id,
            vm=event.vm_name,
            annotation=event.annotation or "",
            occurred=rfc3339(event.occurred_at) or "",
            at=rfc3339(now) or "",
            action=step,
        )

    if node.ready is True:
        if node.ready_changed is not None and node.ready_changed > event.occurred_at:
            record = node.record.add(entry(Step.NODE_READY), taint_ours=node.record.taint_ours)
            return Plan(Outcome.RECOVERED, record=record, detail="Ready again since the event")
        return Plan(Outcome.NOT_READY_YET, retry_after=not_ready_after, detail="still Ready")
    if node.ready is None or node.ready_changed is None:
        return Plan(
            Outcome.NOT_READY_YET,
            retry_after=not_ready_after,
            detail="no Ready condition with a transition time: cannot tell how long it is down",
        )
    unready_for = (now - node.ready_changed).total_seconds()
    if unready_for < not_ready_after:
        return Plan(
            Outcome.NOT_READY_YET,
            retry_after=not_ready_after - unready_for,
            detail=f"not Ready for {max(unready_for, 0.0):.0f}s only",
        )
    if has_taint(node.taints, taint):
        record = node.record.add(entry(Step.ALREADY_TAINTED), taint_ours=node.record.taint_ours)
        return Plan(Outcome.TAINTED, record=record, detail="the taint was there already")
    added = taint.to_json()
    if taint.effect == "NoExecute":
        added["timeAdded"] = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = node.record.add(entry(Step.TAINTED), taint_ours=True)
    return Plan(
        Outcome.TAINTED,
        taints=(*node.taints, added),
        record=record,
        detail=f"not Ready for {unready_for:.0f}s",
    )


def plan_reconcile(node: NodeFacts, *, now: datetime, taint: Taint) -> Plan | None:
    """Remove our taint from a node that is Ready again; None when there is nothing to do."""
    if not node.record.taint_ours:
        return None
    if not has_taint(node.taints, taint):
        # Someone else removed it: it is no longer ours to remove.
        record = RecoveryRecord(taint_ours=False, history=node.record.history)
        return Plan(Outcome.ALREADY_DONE, record=record, detail="the taint was removed by another")
    if node.ready is not True:
        return None
    cause = next((e for e in reversed(node.record.history) if e.action is Step.TAINTED), None)
    entry = HistoryEntry(
        event_id=cause.event_id if cause else "",
        vm=cause.vm if cause else "",
        annotation=cause.annotation if cause else "",
        occurred=cause.occurred if cause else "",
        at=rfc3339(now) or "",
        action=Step.UNTAINTED,
    )
    taints = tuple(t for t in node.taints if not is_taint(t, taint))
    return Plan(
        Outcome.UNTAINTED,
        taints=taints,
        record=node.record.add(entry, taint_ours=False),
        detail="Ready again",
    )


# --- mechanism ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recovery:
    """What became of one event (or one node, for reconcile)."""

    outcome: Outcome
    event_id: str
    vm: str
    node: str | None
    nodepool: str
    retry_after: float | None = None
    detail: str = ""


class _NodeGone(Exception):
    pass


Planner = Callable[[NodeFacts], Plan | None]


class RecoveryHandler:
    def __init__(
        self,
        *,
        kube: KubeClient,
        clock: Clock,
        metrics: Metrics,
        log: Logger,
        cluster: str,
        fleet: FleetCounter,
        not_ready_after: float,
        taint: Taint,
        dry_run: bool,
        rng: random.Random | None = None,
        conflict_budget: float = CONFLICT_BUDGET,
        page_size: int = LIST_PAGE,
    ) -> None:
        self._kube = kube
        self._clock = clock
        self._metrics = metrics
        self._log = log
        self._cluster = cluster
        self._fleet = fleet
        self._not_ready_after = not_ready_after
        self._taint = taint
        self._dry_run = dry_run
        self._rng = rng or random.Random()
        self._conflict_budget = conflict_budget
        self._page_size = page_size

    async def handle(self, event: FleetEvent) -> Recovery:
        """Act on one event. Raises ``KubeError`` when the API server fails (the consumer
        abandons the message, and it comes back)."""
        log = self._log.bind(event_id=event.event_id, vm=event.vm_name, annotation=event.annotation)
        if not event.relevant or event.vm is None:
            result = Recovery(
                Outcome.IGNORED,
                event.event_id,
                event.vm_name,
                None,
                UNKNOWN_NODEPOOL,
                detail=event.ignore_reason,
            )
            return await self._report(result, event, log)
        nodes = await self.nodes()
        node = find_node(nodes, event.vm)
        if node is None:
            return await self._report(self._missing(event, event.vm, nodes), event, log)
        facts = node_facts(node, log)
        log = log.bind(node=facts.name)

        def planner(current: NodeFacts) -> Plan:
            return plan_eviction(
                event,
                current,
                now=self._clock.now(),
                not_ready_after=self._not_ready_after,
                taint=self._taint,
            )

        try:
            plan, facts = await self._apply(node, planner, log)
        except _NodeGone:
            return await self._report(self._missing(event, event.vm, nodes), event, log)
        assert plan is not None  # plan_eviction always plans
        result = Recovery(
            plan.outcome,
            event.event_id,
            event.vm_name,
            facts.name,
            facts.nodepool or UNKNOWN_NODEPOOL,
            retry_after=plan.retry_after,
            detail=plan.detail,
        )
        return await self._report(result, event, log)

    async def reconcile(self) -> list[Recovery]:
        """Untaint every node we tainted that is Ready again. Raises ``KubeError``."""
        results = []
        for node in await self.nodes():
            facts = node_facts(node, self._log)
            if not facts.record.taint_ours:
                continue
            log = self._log.bind(node=facts.name)
            try:
                plan, facts = await self._apply(
                    node,
                    lambda current: plan_reconcile(
                        current, now=self._clock.now(), taint=self._taint
                    ),
                    log,
                )
            except _NodeGone:
                continue
            if plan is None:
                continue
            last = facts.record.history[-1] if facts.record.history else None
            result = Recovery(
                plan.outcome,
                last.event_id if last else "",
                last.vm if last else "",
                facts.name,
                facts.nodepool or UNKNOWN_NODEPOOL,
                detail=plan.detail,
            )
            self._metrics.queue_recovery(result.outcome.value)
            log.info("recovery_reconciled", outcome=result.outcome.value, detail=result.detail)
            results.append(result)
        return results

    async def run_reconciler(self, interval: float) -> None:
        """``reconcile`` every ``interval`` seconds, for ever. API errors are logged and so is
        a bug: one bad node must not end queue mode."""
        while True:
            try:
                await self.reconcile()
            except KubeError as exc:
                self._log.warning("recovery_reconcile_failed", error=str(exc))
            except Exception:
                self._log.exception("recovery_reconcile_bug")
            await asyncio.sleep(interval)

    async def prime_metrics(self) -> list[str]:
        """Create ``spotguard_fleet_evictions_total`` at zero for the node pools there are now
        (and ``unknown``); the pools. Raises ``KubeError``."""
        pools = sorted({node_facts(n).nodepool for n in await self.nodes()} - {""})
        self._metrics.fleet_pools(self._cluster, pools)
        return pools

    async def nodes(self) -> list[JSON]:
        """Every node, page by page."""
        nodes: list[JSON] = []
        token = ""
        while True:
            query: dict[str, str | int | bool] = {"limit": self._page_size}
            if token:
                query["continue"] = token
            page = await self._kube.request("GET", "/api/v1/nodes", query=query)
            items = page.get("items")
            if not isinstance(items, list):
                raise KubeError(200, "node list without items")
            nodes.extend(n for n in items if isinstance(n, dict))
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return nodes

    # --- internals ------------------------------------------------------------------------

    async def _apply(
        self, node: JSON, planner: Planner, log: Logger
    ) -> tuple[Plan | None, NodeFacts]:
        """Plan against the node and write the plan, replanning on the fresh node after a 409."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._conflict_budget
        facts = node_facts(node, log)
        path = f"/api/v1/nodes/{facts.name}"
        attempt = 0
        while True:
            plan = planner(facts)
            patch = _patch(facts, plan) if plan is not None else None
            if plan is None or patch is None:
                return plan, facts
            if self._dry_run:
                log.info("dry_run_write", action="recovery", verb="patch", patch=patch)
                return plan, facts
            try:
                updated = await self._kube.request("PATCH", path, body=patch, content_type=SMP)
            except KubeError as exc:
                if exc.status == 404:
                    raise _NodeGone from None
                if exc.status != 409 or loop.time() >= give_up:
                    raise
                attempt += 1
                log.debug("node_write_conflict", action="recovery", attempt=attempt)
                await asyncio.sleep(self._rng.uniform(0, min(0.2, 0.01 * attempt)))
                try:
                    facts = node_facts(await self._kube.request("GET", path), log)
                except KubeError as read_exc:
                    if read_exc.status == 404:
                        raise _NodeGone from None
                    raise
                continue
            return plan, node_facts(updated, log)

    def _missing(self, event: FleetEvent, vm: VmIdentity, nodes: list[JSON]) -> Recovery:
        """No node has this VM: gone from this cluster, or never in it. A VM in a node resource
        group of this cluster belongs to it; its pool is that of a node of the same scale set."""
        group = (vm.subscription.casefold(), vm.resource_group.casefold())
        ours = False
        nodepool = UNKNOWN_NODEPOOL
        for node in nodes:
            identity = _identity(str((node.get("spec") or {}).get("providerID", "")))
            if identity is None or (_key(identity)[:2]) != group:
                continue
            ours = True
            if vm.scale_set and (identity.scale_set or "").casefold() == vm.scale_set.casefold():
                nodepool = node_facts(node).nodepool or UNKNOWN_NODEPOOL
                break
        if not ours:
            return Recovery(
                Outcome.NOT_IN_CLUSTER,
                event.event_id,
                event.vm_name,
                None,
                UNKNOWN_NODEPOOL,
                detail="no node of this cluster is in the VM's resource group",
            )
        return Recovery(
            Outcome.NODE_MISSING,
            event.event_id,
            event.vm_name,
            None,
            nodepool,
            detail="the VM's node is gone",
        )

    async def _report(self, result: Recovery, event: FleetEvent, log: Logger) -> Recovery:
        if event.kind is EventKind.PREEMPTED and result.outcome in EVICTED:
            # After the node write: a failure here raises, the message comes back, and its
            # redelivery (ALREADY_DONE on the node) claims again.
            await self._fleet.count(
                Eviction(
                    vm=event.vm_name,
                    evicted=event.occurred_at,
                    source=Reporter.EVENT_GRID,
                    source_id=event.event_id,
                    nodepool=result.nodepool,
                    node=result.node or "",
                )
            )
        self._metrics.queue_recovery(result.outcome.value)
        log.info(
            "recovery",
            outcome=result.outcome.value,
            node=result.node,
            nodepool=result.nodepool,
            retry_after=result.retry_after,
            detail=result.detail,
            dry_run=self._dry_run,
        )
        return result


def find_node(nodes: list[JSON], vm: VmIdentity) -> JSON | None:
    """The node whose ``spec.providerID`` is this VM (compared as Azure does: ignoring case)."""
    wanted = _key(vm)
    for node in nodes:
        identity = _identity(str((node.get("spec") or {}).get("providerID", "")))
        if identity is not None and _key(identity) == wanted:
            return node
    return None


def _identity(provider_id: str) -> VmIdentity | None:
    if not provider_id:
        return None
    try:
        return parse_vm_resource_id(provider_id)
    except IdentityError:
        return None


def _key(identity: VmIdentity) -> tuple[str, str, str, str]:
    return (
        identity.subscription.casefold(),
        identity.resource_group.casefold(),
        (identity.scale_set or "").casefold(),
        identity.name.casefold(),
    )


def _patch(current: NodeFacts, plan: Plan) -> JSON | None:
    spec: JSON = {}
    if plan.taints is not None and plan.taints != current.taints:
        # An atomic list: the whole of it, safe under the resourceVersion precondition.
        spec["taints"] = list(plan.taints) if plan.taints else None
    metadata: JSON = {"resourceVersion": current.resource_version}
    if plan.record is not None and plan.record != current.record:
        metadata["annotations"] = {RECOVERY_ANNOTATION: render_record(plan.record)}
    if not spec and len(metadata) == 1:
        return None
    patch: JSON = {"metadata": metadata}
    if spec:
        patch["spec"] = spec
    return patch


def recovery_record(node: Mapping[str, Any]) -> RecoveryRecord:
    """The record on a node object (for tests and tools)."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    return parse_record(annotations.get(RECOVERY_ANNOTATION))
