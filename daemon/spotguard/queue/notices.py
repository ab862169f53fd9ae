"""Queue mode's own subscription of the agents' notices topic: a Preempt notice is an eviction.

Agents publish every notice as a CloudEvent (``sinks.cloudevents``: structured JSON, ``type``
``io.spotguard.notice.v1``, ``source`` ``/spotguard/<cluster>/<node>``, ``data`` the notice,
application properties ``type, phase, kind, cluster, nodepool, node, event_id``). With
``queue_notices_subscription`` (``<topic>/<subscription>``) the leader also reads that
subscription (``consumer.NoticeConsumer``) and counts each Preempt notice as one fleet eviction of
the node's pool, through the same ledger as Event Grid's events (``queue.fleet``: one eviction
per VM within 15 minutes, whichever source reports it first). ``parse_notice`` has three answers:

- countable: type ``io.spotguard.notice.v1``, ``data.kind`` ``preempt``, not cancelled, not a
  drill (a rehearsal evicts nothing), with the VM (``data.vm_name``) and a time (``not_before``,
  else ``deadline``, else the message's ``time``);
- valid but not an eviction (``ignore_reason``): another CloudEvent type (an outcome), another
  kind, a cancelled notice, a drill; completed without counting;
- ``InvalidEvent``: not JSON, not a CloudEvent, a notice without its fields; dead-lettered.

``NoticeCounter`` adds what the message alone cannot say: a notice of another cluster (the topic
may be shared; a subscription filter on ``cluster`` is better) is not counted; a notice without
a ``nodepool`` property is counted against its node's pool label, or ``unknown`` once the node
is gone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from spotguard.kube.client import KubeClient, KubeError
from spotguard.model import Kind, Source, Status
from spotguard.observability.metrics import UNKNOWN_NODEPOOL
from spotguard.queue.events import (
    MAX_BODY_BYTES,
    InvalidEvent,
    _json_type,
    _optional_text,
    _properties,
    _required_text,
    _time,
)
from spotguard.queue.fleet import Decision, Eviction, FleetCounter
from spotguard.queue.fleet import Source as Reporter
from spotguard.queue.recovery import NODEPOOL_LABELS
from spotguard.sinks.cloudevents import NOTICE_TYPE, SPEC_VERSION

Logger = structlog.typing.FilteringBoundLogger

SOURCE_PREFIX = "/spotguard/"
#: A Node's name is a DNS subdomain (and goes into an API path).
NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class NoticeMessage:
    """One message of the notices topic, as queue mode's fleet count sees it."""

    id: str  # the CloudEvent id, <node>:<event_id>:<phase>
    type: str
    cluster: str  # "" when the message does not say
    node: str
    nodepool: str  # "" when the message does not say
    kind: str
    vm: str
    event_id: str
    evicted_at: datetime | None  # when the VM goes: NotBefore, else the deadline, else the time
    ignore_reason: str = ""  # why it is not an eviction

    @property
    def countable(self) -> bool:
        return not self.ignore_reason


def parse_notice(
    body: bytes | bytearray | memoryview | str,
    *,
    content_type: str | None = None,
    application_properties: Mapping[Any, Any] | None = None,
) -> NoticeMessage:
    """Read one message of the notices topic; raises only ``InvalidEvent``."""
    try:
        return _parse(body, content_type, _properties(application_properties))
    except InvalidEvent:
        raise
    except Exception as exc:  # a message from outside must never take the consumer down
        raise InvalidEvent(f"unreadable notice ({type(exc).__name__})") from exc


def _parse(
    body: bytes | bytearray | memoryview | str, content_type: str | None, props: dict[str, str]
) -> NoticeMessage:
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidEvent(f"body of {len(raw)} bytes is larger than any notice")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media and "json" not in media:
        raise InvalidEvent(f"content type {media!r} is not JSON")
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidEvent("body is not JSON") from None
    if not isinstance(event, dict):
        raise InvalidEvent(f"body is a JSON {_json_type(event)}, not a CloudEvent")
    if event.get("specversion") != SPEC_VERSION:
        raise InvalidEvent("not a CloudEvent 1.0 in structured mode (specversion)")
    event_id = _required_text(event, "id")
    type_ = _required_text(event, "type")
    source = _required_text(event, "source")
    cluster = props.get("cluster", "").strip() or _cluster_of(source)
    if type_ != NOTICE_TYPE:
        return _ignored(event_id, type_, cluster, f"type {type_[:80]!r} is not a notice")
    data = event.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent(f"data is a JSON {_json_type(data)}, not a notice object")
    kind = _required_text(data, "kind").lower()
    node = _required_text(data, "node")
    if not NODE_NAME.match(node):
        raise InvalidEvent(f"data.node {node[:80]!r} is not a node name")
    vm = _required_text(data, "vm_name")
    notice_event_id = _required_text(data, "event_id")
    status = _optional_text(data, "status").lower()
    origin = _optional_text(data, "source").lower()
    nodepool = props.get("nodepool", "").strip() or _optional_text(data, "nodepool")
    evicted_at = (
        _time(data, "not_before", required=False)
        or _time(data, "deadline", required=False)
        or _time(event, "time", required=False)
    )
    reason = ""
    if kind != Kind.PREEMPT.value:
        reason = f"a {kind[:40]!r} notice is not an eviction"
    elif status == Status.CANCELLED.value:
        reason = "the notice was cancelled"
    elif origin == Source.DRILL.value:
        reason = "a drill rehearses an eviction, it is not one"
    elif evicted_at is None:
        raise InvalidEvent("a preempt notice without not_before, deadline or time")
    return NoticeMessage(
        id=event_id,
        type=type_,
        cluster=cluster,
        node=node,
        nodepool=nodepool,
        kind=kind,
        vm=vm,
        event_id=notice_event_id,
        evicted_at=evicted_at,
        ignore_reason=reason,
    )


def _ignored(event_id: str, type_: str, cluster: str, reason: str) -> NoticeMessage:
    return NoticeMessage(
        id=event_id,
        type=type_,
        cluster=cluster,
        node="",
        nodepool="",
        kind="",
        vm="",
        event_id="",
        evicted_at=None,
        ignore_reason=reason,
    )


def _cluster_of(source: str) -> str:
    """``/spotguard/<cluster>/<node>`` → the cluster (agents write ``unknown`` when unset)."""
    if not source.startswith(SOURCE_PREFIX):
        return ""
    cluster = source[len(SOURCE_PREFIX) :].split("/", 1)[0]
    return "" if cluster == "unknown" else cluster


class NoticeCounter:
    """What a parsed notice comes to: counted (or found counted) in the ledger, or ignored."""

    def __init__(self, *, fleet: FleetCounter, kube: KubeClient, log: Logger) -> None:
        self._fleet = fleet
        self._kube = kube
        self._log = log

    async def handle(self, notice: NoticeMessage) -> Decision | None:
        """The ledger's decision, or None when the notice is not this cluster's eviction.
        Raises ``KubeError`` (the consumer abandons the message, and it comes back)."""
        log = self._log.bind(message_id=notice.id, node=notice.node or None)
        reason = notice.ignore_reason
        ours = self._fleet.cluster
        if not reason and ours and notice.cluster and notice.cluster.casefold() != ours.casefold():
            reason = f"a notice of cluster {notice.cluster[:80]!r}, not {ours!r}"
        if reason:
            log.info("notice_ignored", type=notice.type, kind=notice.kind or None, reason=reason)
            return None
        assert notice.evicted_at is not None
        nodepool = notice.nodepool or await self._pool_of(notice.node)
        return await self._fleet.count(
            Eviction(
                vm=notice.vm,
                evicted=notice.evicted_at,
                source=Reporter.NOTICE,
                source_id=notice.id,
                nodepool=nodepool,
                node=notice.node,
            ),
            cluster=notice.cluster,
        )

    async def _pool_of(self, node: str) -> str:
        try:
            obj = await self._kube.request("GET", f"/api/v1/nodes/{node}")
        except KubeError as exc:
            if exc.status == 404:
                return UNKNOWN_NODEPOOL
            raise
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return next((str(labels[k]) for k in NODEPOOL_LABELS if labels.get(k)), UNKNOWN_NODEPOOL)
