"""In-memory object storage with etcd-like resourceVersions and a bounded change log.

Every write gets the next cluster-wide resourceVersion and exactly one change (ADDED, MODIFIED,
DELETED) in the log, so ``resourceVersion`` N maps to log entry N and a watch resumes by
slicing. The log keeps the last ``log_size`` changes; asking for older ones is the 410 a real
apiserver answers after compaction.

Stored objects are never modified in place: a write stores a new dict, so the log, lists and
watch streams can share them, and each one is JSON-encoded at most once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotguard.clock import Clock
from spotguard.sim.kube_errors import already_exists
from spotguard.sim.kube_resources import ResourceType

ObjectKey = tuple[str, str]  # (namespace or "", name)


def k8s_time(moment: datetime) -> str:
    """``metav1.Time``: RFC 3339 in UTC with second precision."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Stored:
    """One version of one object, with its JSON encoding computed once on demand."""

    __slots__ = ("_raw", "obj")

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self._raw: bytes | None = None

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = json.dumps(self.obj, separators=(",", ":")).encode()
        return self._raw

    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = self.obj["metadata"]
        return meta

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def namespace(self) -> str:
        return str(self.meta.get("namespace") or "")

    @property
    def rv(self) -> int:
        return int(self.meta["resourceVersion"])


@dataclass(frozen=True, slots=True)
class Change:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    rtype: ResourceType
    new: Stored
    old: Stored | None


def spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything that is neither metadata nor status: what bumps ``metadata.generation``."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class ObjectStore:
    def __init__(self, *, clock: Clock, log_size: int = 10_000) -> None:
        self._clock = clock
        self._log_size = log_size
        self._objects: dict[tuple[str, str], dict[ObjectKey, Stored]] = {}
        self._sorted: dict[tuple[str, str], list[ObjectKey]] = {}
        self._rv = 0
        self._log: list[Change] = []
        self._log_base = 1  # resourceVersion of self._log[0]
        self._waiters: set[asyncio.Event] = set()
        self._hooks: list[Callable[[Change], None]] = []
        self._pending: deque[Change] = deque()
        self._dispatching = False

    # --- reading --------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def now(self) -> str:
        return k8s_time(self._clock.now())

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Stored | None:
        bucket = self._objects.get((rtype.group, rtype.plural))
        if bucket is None:
            return None
        return bucket.get((namespace or "" if rtype.namespaced else "", name))

    def items(self, rtype: ResourceType, namespace: str | None = None) -> Iterator[Stored]:
        """Objects in etcd key order (namespace, then name); all namespaces if None."""
        key = (rtype.group, rtype.plural)
        bucket = self._objects.get(key)
        if not bucket:
            return
        order = self._sorted.get(key)
        if order is None:
            order = self._sorted[key] = sorted(bucket)
        for object_key in order:
            if namespace is None or object_key[0] == namespace:
                yield bucket[object_key]

    def count(self, rtype: ResourceType) -> int:
        return len(self._objects.get((rtype.group, rtype.plural), ()))

    def changes_since(self, rv: int) -> list[Change] | None:
        """Changes after ``rv``, or None when some of them were compacted away."""
        if rv >= self._rv:
            return []
        if rv < self._log_base - 1:
            return None
        return self._log[rv - self._log_base + 1 :]

    @property
    def oldest_resource_version(self) -> int:
        return self._log_base - 1

    # --- writing --------------------------------------------------------------------------

    def create(self, rtype: ResourceType, obj: dict[str, Any]) -> Stored:
        """Store a new object, stamping uid, creationTimestamp, generation and rv."""
        meta = dict(obj["metadata"])
        obj = {**obj, "metadata": meta}
        key = (meta.get("namespace") or "" if rtype.namespaced else "", meta["name"])
        bucket = self._objects.setdefault((rtype.group, rtype.plural), {})
        if key in bucket:
            raise already_exists(rtype, meta["name"])
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", self.now())
        if rtype.tracks_generation:
            meta["generation"] = meta.get("generation") or 1
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        stored = self._stamp(obj)
        bucket[key] = stored
        self._sorted.pop((rtype.group, rtype.plural), None)
        self._emit(Change(stored.rv, "ADDED", rtype, stored, None))
        return stored

    def replace(self, rtype: ResourceType, old: Stored, obj: dict[str, Any]) -> Stored:
        """Store a new version of ``old``. A write that changes nothing is not a write."""
        meta = dict(obj["metadata"])
        obj = {**obj, "metadata": meta}
        for fixed in ("uid", "creationTimestamp", "name", "namespace"):
            if fixed in old.meta:
                meta[fixed] = old.meta[fixed]
        meta["resourceVersion"] = old.meta["resourceVersion"]
        if rtype.tracks_generation:
            generation = old.meta.get("generation") or 1
            if spec_of(obj) != spec_of(old.obj) or (
                "deletionTimestamp" in meta and "deletionTimestamp" not in old.meta
            ):
                generation += 1
            meta["generation"] = generation
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        if obj == old.obj:
            return old
        stored = self._stamp(obj)
        self._objects[(rtype.group, rtype.plural)][(old.namespace, old.name)] = stored
        self._emit(Change(stored.rv, "MODIFIED", rtype, stored, old))
        return stored

    def remove(self, rtype: ResourceType, old: Stored) -> Stored:
        """Delete for good. The DELETED event carries the last state at a new resourceVersion."""
        del self._objects[(rtype.group, rtype.plural)][(old.namespace, old.name)]
        self._sorted.pop((rtype.group, rtype.plural), None)
        final = self._stamp({**old.obj, "metadata": dict(old.meta)})
        self._emit(Change(final.rv, "DELETED", rtype, final, old))
        return final

    def _stamp(self, obj: dict[str, Any]) -> Stored:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        return Stored(obj)

    # --- change notification --------------------------------------------------------------

    def add_hook(self, hook: Callable[[Change], None]) -> None:
        """Run ``hook`` synchronously after every change (controllers, kubelet stand-in)."""
        self._hooks.append(hook)

    def add_waiter(self, event: asyncio.Event) -> None:
        self._waiters.add(event)

    def remove_waiter(self, event: asyncio.Event) -> None:
        self._waiters.discard(event)

    def wake_all(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    def _emit(self, change: Change) -> None:
        self._log.append(change)
        if len(self._log) > 2 * self._log_size:
            drop = len(self._log) - self._log_size
            del self._log[:drop]
            self._log_base += drop
        self.wake_all()
        # Hooks may write too; queue their changes instead of recursing.
        self._pending.append(change)
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._pending:
                pending = self._pending.popleft()
                for hook in self._hooks:
                    hook(pending)
        finally:
            self._pending.clear()
            self._dispatching = False
