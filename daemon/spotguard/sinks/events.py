"""Kubernetes Events (core/v1) on the Node, from one reason catalogue.

At most one Event per (node, event id, reason): its name is derived from all three, so a second
create — from a retry, or from an agent that restarted and resumed — gets 409 and is a no-op.
Reasons are prefixed ``Spotguard`` so they never clash with AKS Node Problem Detector's
(``PreemptScheduled`` is NPD's). Recording is best-effort: a failure is logged and reported to the
caller, never raised into the drain.
"""

from __future__ import annotations

import enum
import hashlib

import structlog

from spotguard.clock import Clock, rfc3339
from spotguard.kube.client import JSON, KubeClient, KubeError

Logger = structlog.typing.FilteringBoundLogger

COMPONENT = "spotguard"
#: Node Events live in the default namespace, where kubectl describe node looks for them.
NAMESPACE = "default"


class Reason(enum.StrEnum):
    NOTICE = "SpotguardNotice"
    CORDONED = "SpotguardCordoned"
    CHECKPOINT_REQUESTED = "SpotguardCheckpointRequested"
    DRAINED = "SpotguardDrained"
    DRAIN_FAILED = "SpotguardDrainFailed"
    ACKNOWLEDGED = "SpotguardAcknowledged"
    CANCELLED = "SpotguardNoticeCancelled"
    UNCORDONED = "SpotguardUncordoned"


WARNINGS = frozenset({Reason.NOTICE, Reason.DRAIN_FAILED})


def event_name(node: str, event_id: str, reason: Reason) -> str:
    """Deterministic, valid (DNS subdomain, ≤ 253 characters) and unique per the triple."""
    digest = hashlib.sha256(f"{node}\0{event_id}\0{reason.value}".encode()).hexdigest()[:20]
    return f"{node[:200].rstrip('.-')}.spotguard.{digest}"


class EventRecorder:
    def __init__(
        self,
        *,
        kube: KubeClient,
        node: str,
        node_uid: str,
        clock: Clock,
        dry_run: bool,
        log: Logger,
    ) -> None:
        self._kube = kube
        self._node = node
        self._node_uid = node_uid
        self._clock = clock
        self._dry_run = dry_run
        self._log = log.bind(node=node)

    def body(self, *, reason: Reason, event_id: str, message: str) -> JSON:
        now = rfc3339(self._clock.now())
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": event_name(self._node, event_id, reason),
                "namespace": NAMESPACE,
                "annotations": {"spotguard.io/event-id": event_id},
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self._node,
                "uid": self._node_uid,
            },
            "reason": reason.value,
            "message": message[:1024],
            "type": "Warning" if reason in WARNINGS else "Normal",
            "source": {"component": COMPONENT, "host": self._node},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    async def record(self, *, reason: Reason, event_id: str, message: str) -> bool:
        """Create the Event; True if created or already there, False if it could not be."""
        body = self.body(reason=reason, event_id=event_id, message=message)
        if self._dry_run:
            self._log.info("dry_run_write", action="event", verb="create", reason=reason.value)
            return True
        try:
            await self._kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/events", body=body)
        except KubeError as exc:
            if exc.status == 409:
                return True  # recorded before: by us, before a retry or a restart
            self._log.warning(
                "event_not_recorded", reason=reason.value, event_id=event_id, error=str(exc)
            )
            return False
        return True
