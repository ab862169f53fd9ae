"""Leader election for queue mode: one coordination.k8s.io/v1 Lease, client-go's algorithm.

Queue mode runs as a Deployment that may have more than one replica; only the leader takes
messages. The Lease ``spotguard-queue`` in the pod's namespace names the leader
(``holderIdentity``, the pod's name). As in client-go's ``leaderelection``:

- a candidate GETs the lease every ``retry_period`` (jittered); it takes the lease when it is
  free (no holder: released) or expired, and *expired* is judged on the candidate's own
  monotonic clock: ``lease_duration`` after the record last changed **as this candidate saw
  it**, never by comparing ``renewTime`` with its wall clock (clocks of two nodes disagree);
- every write is a PUT of the whole Lease carrying the ``resourceVersion`` that was read, so two
  candidates racing for it cannot both win: the loser gets 409 and keeps waiting;
- the leader renews every ``retry_period``; when it has not managed to for ``renew_deadline``
  (< ``lease_duration``) it steps down, *before* another candidate can consider the lease
  expired, so two replicas never both believe they lead; seeing another holder, it steps down
  at once;
- on shutdown the leader releases the lease (empty holder, duration 1 s), and the next
  candidate takes over at its next try instead of waiting for expiry.

``renewTime``/``acquireTime`` are the only wall-clock values, from the injected ``Clock``, in
Kubernetes' MicroTime format. The consumer watches ``is_leader`` (set while leading) and
``lost`` (set whenever not leading: initially, after losing, after stopping), and may compare
``term`` to tell one leadership from the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import random
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import structlog

from spotguard.clock import Clock
from spotguard.kube.client import JSON, KubeClient, KubeError
from spotguard.observability.metrics import Metrics

Logger = structlog.typing.FilteringBoundLogger

LEASE_NAME = "spotguard-queue"
#: client-go's JitterFactor for the acquire loop: wait retry_period x [1, 2.2).
JITTER_FACTOR = 1.2


class _Attempt(enum.Enum):
    HELD = "held"  # we hold the lease now
    OTHER = "other"  # another candidate holds it, and it has not expired
    FAILED = "failed"  # no answer, an error, or a lost race (409): try again


def micro_time(moment: datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 in UTC with microseconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        *,
        kube: KubeClient,
        namespace: str,
        identity: str,
        clock: Clock,
        log: Logger,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        name: str = LEASE_NAME,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not identity or not namespace:
            raise ValueError("leader election needs this pod's name and namespace")
        if not lease_duration > renew_deadline > retry_period * JITTER_FACTOR > 0:
            raise ValueError(
                "leader election needs lease_duration > renew_deadline > 1.2 x retry_period"
            )
        self._kube = kube
        self._clock = clock
        self._log = log.bind(lease=f"{namespace}/{name}", identity=identity)
        self._metrics = metrics
        self._rng = rng or random.Random()
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self._collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self._name = name
        self._namespace = namespace
        #: set while this replica leads
        self.is_leader = asyncio.Event()
        #: set while it does not: from the start, after losing the lease, after stopping
        self.lost = asyncio.Event()
        self.lost.set()
        #: leaderships so far; a consumer can tell a new one from the one it started under
        self.term = 0
        self._seen: str | None = None  # the lease's spec as last seen
        self._seen_at = 0.0  # loop time it last changed (or was first seen)
        self._task: asyncio.Task[None] | None = None

    # --- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Campaign, lead, and campaign again after losing, until cancelled; then release."""
        try:
            while True:
                acquired = await self._acquire()
                self._lead()
                reason = await self._renew(acquired)
                self._step_down(reason)
        finally:
            if self.is_leader.is_set():
                self._step_down("stopping")
                await self._release()

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name="leader-election")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop campaigning; a leader steps down, then releases the lease."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # --- the loops ------------------------------------------------------------------------

    async def _acquire(self) -> float:
        """Try until the lease is ours; the loop time the successful write was sent."""
        loop = asyncio.get_running_loop()
        while True:
            sent = loop.time()
            if await self._try(self._kube.timeout) is _Attempt.HELD:
                return sent
            await asyncio.sleep(self.retry_period * (1 + self._rng.random() * JITTER_FACTOR))

    async def _renew(self, acquired: float) -> str:
        """Renew every retry period until that fails for renew_deadline; why it ended."""
        loop = asyncio.get_running_loop()
        renewed = acquired  # when the last successful write was sent: the lease runs from then
        while True:
            await asyncio.sleep(self.retry_period)
            deadline = renewed + self.renew_deadline
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    return "renew deadline passed"
                sent = loop.time()
                try:
                    async with asyncio.timeout(left):  # the read and the write, together
                        attempt = await self._try(min(self._kube.timeout, left))
                except TimeoutError:
                    attempt = _Attempt.FAILED
                if attempt is _Attempt.HELD:
                    renewed = sent
                    break
                if attempt is _Attempt.OTHER:
                    return "another replica holds the lease"
                await asyncio.sleep(max(0.0, min(self.retry_period, deadline - loop.time())))

    def _lead(self) -> None:
        self.term += 1
        self.lost.clear()
        self.is_leader.set()
        if self._metrics is not None:
            self._metrics.queue_leader.set(1)
        self._log.info("leader_acquired", term=self.term)

    def _step_down(self, reason: str) -> None:
        self.is_leader.clear()
        self.lost.set()
        if self._metrics is not None:
            self._metrics.queue_leader.set(0)
        self._log.warning("leader_lost", term=self.term, reason=reason)

    # --- one try --------------------------------------------------------------------------

    async def _try(self, timeout: float) -> _Attempt:
        """client-go's tryAcquireOrRenew: create the lease, renew ours, or take an expired one."""
        now = micro_time(self._clock.now())
        try:
            lease = await self._kube.request("GET", self._path, timeout=timeout)
        except KubeError as exc:
            if exc.status != 404:
                self._log.warning("lease_read_failed", error=str(exc))
                return _Attempt.FAILED
            return await self._create(now, timeout)
        spec = lease.get("spec")
        spec = spec if isinstance(spec, dict) else {}
        self._observe(spec)
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity and not self._expired(spec):
            return _Attempt.OTHER
        wanted: JSON = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self._duration_seconds(),
            "renewTime": now,
        }
        if holder != self.identity:
            wanted["acquireTime"] = now
            wanted["leaseTransitions"] = _int(spec.get("leaseTransitions")) + 1
        try:
            updated = await self._kube.request(
                "PUT", self._path, body={**lease, "spec": wanted}, timeout=timeout
            )
        except KubeError as exc:
            # 409: someone wrote the lease since we read it; the next read tells who.
            self._log.info("lease_write_failed", error=str(exc), holder=holder or None)
            return _Attempt.FAILED
        written = updated.get("spec")
        self._observe(written if isinstance(written, dict) else wanted)
        return _Attempt.HELD

    async def _create(self, now: str, timeout: float) -> _Attempt:
        spec: JSON = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self._duration_seconds(),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 0,
        }
        body: JSON = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._name, "namespace": self._namespace},
            "spec": spec,
        }
        try:
            await self._kube.request("POST", self._collection, body=body, timeout=timeout)
        except KubeError as exc:
            if exc.status != 409:  # 409: another candidate created it first
                self._log.warning("lease_create_failed", error=str(exc))
            return _Attempt.FAILED
        self._observe(spec)
        return _Attempt.HELD

    async def _release(self) -> None:
        """Hand the lease back (client-go's release: no holder, 1 s), if it is still ours."""
        timeout = min(self._kube.timeout, self.renew_deadline)
        try:
            lease = await self._kube.request("GET", self._path, timeout=timeout)
            spec = lease.get("spec")
            spec = spec if isinstance(spec, dict) else {}
            if spec.get("holderIdentity") != self.identity:
                return
            now = micro_time(self._clock.now())
            released: JSON = {
                **spec,
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "acquireTime": now,
                "renewTime": now,
            }
            await self._kube.request(
                "PUT", self._path, body={**lease, "spec": released}, timeout=timeout
            )
        except KubeError as exc:
            self._log.warning("lease_release_failed", error=str(exc))
            return
        self._log.info("leader_released", term=self.term)

    # --- expiry, on our own clock -----------------------------------------------------------

    def _observe(self, spec: dict[str, Any]) -> None:
        key = json.dumps(spec, sort_keys=True, default=str)
        if key != self._seen:
            self._seen = key
            self._seen_at = asyncio.get_running_loop().time()

    def _expired(self, spec: dict[str, Any]) -> bool:
        duration = _int(spec.get("leaseDurationSeconds")) or self._duration_seconds()
        return asyncio.get_running_loop().time() >= self._seen_at + duration

    def _duration_seconds(self) -> int:
        # leaseDurationSeconds is an integer; round up so that others never wait too little.
        return max(1, math.ceil(self.lease_duration))


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
