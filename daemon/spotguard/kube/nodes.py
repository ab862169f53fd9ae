"""Node actions: cordon, the ``spotguard.io/<kind>`` taints and the ``spotguard.io/notices`` record.

Every change is one read-modify-write of the Node with a ``resourceVersion`` precondition (a
strategic-merge patch carrying ``metadata.resourceVersion``), retried on 409. Taints are an atomic
list in Kubernetes, so writing the whole list is only safe under that precondition: a taint another
actor added in between (AKS node auto-drain's ``remediator.kubernetes.azure.com/unschedulable``,
an operator) makes our write fail and be redone on the fresh object, never lost.

Who cordoned matters: a node already unschedulable when our first notice arrives was cordoned by
someone else and is not ours to uncordon. That fact is recorded in the annotation, so a restarted
agent knows it too.

Dry-run is enforced here, the lowest layer: the write is logged and not sent.
"""

from __future__ import annotations

import asyncio
import enum
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from spotguard.kube.client import JSON, SMP, KubeClient, KubeError

Logger = structlog.typing.FilteringBoundLogger

NOTICES_ANNOTATION = "spotguard.io/notices"
TAINT_PREFIX = "spotguard.io/"
TAINT_EFFECT = "NoSchedule"
ANNOTATION_VERSION = 1
#: A conflict means someone else wrote the node between our read and write (the kubelet, Node
#: Problem Detector and AKS's remediator all do). Retry, with a little jitter so that writers
#: racing each other spread out, for as long as this budget allows.
CONFLICT_BUDGET = 10.0


class Phase(enum.StrEnum):
    NOTICED = "noticed"
    CORDONED = "cordoned"
    CHECKPOINTING = "checkpointing"
    DRAINING = "draining"
    DRAINED = "drained"
    ACKNOWLEDGED = "acknowledged"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class NoticeRecord:
    """One entry of the ``spotguard.io/notices`` annotation."""

    kind: str
    deadline: str  # RFC 3339
    phase: Phase
    cordoned_by_us: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "deadline": self.deadline,
            "phase": self.phase.value,
            "cordoned_by_us": self.cordoned_by_us,
        }


@dataclass(frozen=True, slots=True)
class NodeState:
    """What spotguard reads from, and writes to, its node."""

    name: str
    resource_version: str
    unschedulable: bool
    taints: tuple[JSON, ...]
    notices: Mapping[str, NoticeRecord] = field(default_factory=dict)
    provider_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    uid: str = ""

    @property
    def cordoned_by_us(self) -> bool:
        return any(r.cordoned_by_us for r in self.notices.values())

    def taint_keys(self) -> set[str]:
        return {str(t.get("key")) for t in self.taints}


def taint_key(kind: str) -> str:
    return f"{TAINT_PREFIX}{kind}"


def taint_value(event_id: str) -> str:
    # Label-value rules: at most 63 characters. Event ids are GUIDs (36), but be safe.
    return event_id[:63]


def parse_notices(annotation: str | None, log: Logger | None = None) -> dict[str, NoticeRecord]:
    """The annotation's notices; an unreadable annotation counts as empty (and is logged)."""
    if not annotation:
        return {}
    try:
        data = json.loads(annotation)
        entries = data["notices"]
        return {
            str(event_id): NoticeRecord(
                kind=str(entry["kind"]),
                deadline=str(entry["deadline"]),
                phase=Phase(entry["phase"]),
                cordoned_by_us=bool(entry["cordoned_by_us"]),
            )
            for event_id, entry in entries.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if log is not None:
            log.warning("notices_annotation_unreadable", error=repr(exc))
        return {}


def render_notices(notices: Mapping[str, NoticeRecord]) -> str:
    return json.dumps(
        {"v": ANNOTATION_VERSION, "notices": {k: v.to_json() for k, v in notices.items()}},
        sort_keys=True,
        separators=(",", ":"),
    )


def node_state(node: JSON, log: Logger | None = None) -> NodeState:
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    annotations = metadata.get("annotations") or {}
    taints = spec.get("taints") or []
    return NodeState(
        name=str(metadata.get("name", "")),
        resource_version=str(metadata.get("resourceVersion", "")),
        unschedulable=bool(spec.get("unschedulable", False)),
        taints=tuple(t for t in taints if isinstance(t, dict)),
        notices=parse_notices(annotations.get(NOTICES_ANNOTATION), log),
        provider_id=str(spec.get("providerID", "")),
        labels={str(k): str(v) for k, v in (metadata.get("labels") or {}).items()},
        uid=str(metadata.get("uid", "")),
    )


Change = Callable[[NodeState], NodeState]


class NodeActions:
    def __init__(
        self,
        *,
        kube: KubeClient,
        node: str,
        dry_run: bool,
        log: Logger,
        rng: random.Random | None = None,
    ) -> None:
        self._kube = kube
        self._rng = rng or random.Random()
        self._node = node
        self._path = f"/api/v1/nodes/{node}"
        self._dry_run = dry_run
        self._log = log.bind(node=node)

    async def read(self) -> NodeState:
        return node_state(await self._kube.request("GET", self._path), self._log)

    async def update(self, change: Change, *, action: str) -> NodeState:
        """Apply ``change`` to the current node, retrying on conflicts; the resulting state.

        ``change`` gets the node as it is and returns it as it should be; only the differences
        are written. Raises ``KubeError`` when the API server refuses, or keeps conflicting.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + CONFLICT_BUDGET
        attempt = 0
        while True:
            current = await self.read()
            wanted = change(current)
            patch = _patch(current, wanted)
            if patch is None:
                return current
            if self._dry_run:
                self._log.info("dry_run_write", action=action, verb="patch", patch=patch)
                return wanted
            try:
                updated = await self._kube.request(
                    "PATCH", self._path, body=patch, content_type=SMP
                )
            except KubeError as exc:
                if exc.status != 409 or loop.time() >= give_up:
                    raise
                attempt += 1
                self._log.debug("node_write_conflict", action=action, attempt=attempt)
                await asyncio.sleep(self._rng.uniform(0, min(0.2, 0.01 * attempt)))
                continue
            return node_state(updated, self._log)

    # --- the changes the responder makes -------------------------------------------------

    async def begin(
        self, *, event_id: str, kind: str, deadline: str, cordon: bool = True
    ) -> NodeState:
        """Record the notice, add its taint and cordon, in one write."""

        def change(state: NodeState) -> NodeState:
            notices = dict(state.notices)
            if event_id in notices:
                # Resumed after a restart: keep what we knew, re-assert taint and cordon.
                record = notices[event_id]
            else:
                ours = cordon and (state.cordoned_by_us or not state.unschedulable)
                record = NoticeRecord(kind, deadline, Phase.NOTICED, cordoned_by_us=ours)
            if cordon and record.phase is Phase.NOTICED:
                record = replace(record, phase=Phase.CORDONED)
            notices[event_id] = record
            return replace(
                state,
                unschedulable=state.unschedulable or cordon,
                taints=_with_taint(state.taints, kind, event_id) if cordon else state.taints,
                notices=notices,
            )

        return await self.update(change, action="cordon")

    async def set_phase(self, event_id: str, phase: Phase) -> NodeState:
        def change(state: NodeState) -> NodeState:
            record = state.notices.get(event_id)
            if record is None or record.phase is phase:
                return state
            return replace(state, notices={**state.notices, event_id: replace(record, phase=phase)})

        return await self.update(change, action="annotate")

    async def finish(self, event_id: str) -> tuple[NodeState, NodeState]:
        """Forget a notice: drop its taint when no notice of its kind remains, and uncordon when
        we cordoned and no notice remains at all. Returns the node as it was and as it is now
        (the caller tells from the two whether it was uncordoned)."""

        read: list[NodeState] = []

        def change(state: NodeState) -> NodeState:
            read.append(state)  # the last one is the state the write changed
            record = state.notices.get(event_id)
            if record is None:
                return state
            notices = {k: v for k, v in state.notices.items() if k != event_id}
            taints = state.taints
            if not any(r.kind == record.kind for r in notices.values()):
                taints = tuple(t for t in taints if t.get("key") != taint_key(record.kind))
            unschedulable = state.unschedulable
            if not notices and state.cordoned_by_us:
                unschedulable = False
            return replace(state, unschedulable=unschedulable, taints=taints, notices=notices)

        after = await self.update(change, action="uncordon")
        return read[-1], after


def _with_taint(taints: tuple[JSON, ...], kind: str, event_id: str) -> tuple[JSON, ...]:
    key = taint_key(kind)
    if any(t.get("key") == key for t in taints):
        return taints  # one taint per kind; the first notice's id names it
    return (*taints, {"key": key, "value": taint_value(event_id), "effect": TAINT_EFFECT})


def _patch(current: NodeState, wanted: NodeState) -> JSON | None:
    spec: JSON = {}
    if wanted.unschedulable != current.unschedulable:
        spec["unschedulable"] = True if wanted.unschedulable else None
    if wanted.taints != current.taints:
        # Atomic list: the whole of it, safe under the resourceVersion precondition.
        spec["taints"] = list(wanted.taints) if wanted.taints else None
    metadata: JSON = {"resourceVersion": current.resource_version}
    if wanted.notices != current.notices:
        metadata["annotations"] = {
            NOTICES_ANNOTATION: render_notices(wanted.notices) if wanted.notices else None
        }
    if not spec and len(metadata) == 1:
        return None
    patch: JSON = {"metadata": metadata}
    if spec:
        patch["spec"] = spec
    return patch
