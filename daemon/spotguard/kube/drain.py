"""Drain a node inside a preemption notice: ask every pod to leave at once, watch them go.

kubectl drain takes minutes on a full node (one eviction at a time through a 5 requests/s
client limit, 5 s between PDB retries, deletion polled every second); Azure gives 30 s at best.
Here every pod is asked concurrently, each with the grace that fits before the deadline; PDB
refusals are retried quickly while the pod's grace still fits, then (by policy) the pod is
deleted; pods are followed with one watch started from the list's resourceVersion, so no
deletion is missed between the list and the watch. The drain ends when every pod it moves is
gone or the deadline passes, and always returns a ``DrainOutcome``: API failures are recorded,
never raised. Policy (which pods, what grace, what a refusal means) is in ``kube/pods.py``.

Times are event-loop times (``loop.time()``): the caller converts the notice's wall-clock
deadline once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import random
from asyncio import FIRST_COMPLETED
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from spotguard.kube.client import JSON, KubeClient, KubeError, WatchEvent
from spotguard.kube.pods import (
    DrainOptions,
    PodRef,
    Refusal,
    SkipReason,
    classify_refusal,
    delete_body,
    eviction_body,
    finished,
    grace_for,
    own_grace,
    pdb_wait_fits,
    pod_path,
    pod_ref,
    skip_reason,
)

__all__ = [
    "DrainOptions",
    "DrainOutcome",
    "DrainResult",
    "PodHold",
    "PodOutcome",
    "PodReport",
    "drain_node",
    "overall_result",
]

Logger = structlog.typing.FilteringBoundLogger

PODS_PATH = "/api/v1/pods"
#: Below this much time left, a request could not be answered before the deadline.
MIN_REQUEST_WINDOW = 0.01


class PodOutcome(enum.StrEnum):
    EVICTED = "evicted"  # the Eviction API accepted it
    DELETED_AFTER_PDB = "deleted_after_pdb"  # a budget refused until the grace no longer fit
    GONE = "gone"  # left without our request taking effect (deleted by others, finished, 404)
    SKIPPED = "skipped"  # left alone on purpose; ``reason`` says why
    BLOCKED = "blocked"  # a budget refused, and deleting is not allowed
    STILL_PRESENT = "still_present"  # asked to leave (or about to be), still there at the deadline
    FAILED = "failed"  # no request to leave was accepted; ``reason`` has the last error


#: Outcomes of a pod that is no longer on the node.
LEFT = frozenset({PodOutcome.EVICTED, PodOutcome.DELETED_AFTER_PDB, PodOutcome.GONE})


class DrainResult(enum.StrEnum):
    """The ``outcome`` label of ``spotguard_drains_total``."""

    DRAINED = "drained"  # every pod to move has left (or, in dry-run, would be asked to)
    PARTIAL = "partial"  # some left or were asked to; some remain
    FAILED = "failed"  # the pods could not be listed, or not one was moved


@dataclass(frozen=True, slots=True)
class PodReport:
    namespace: str
    name: str
    uid: str
    outcome: PodOutcome
    reason: str = ""
    #: grace period sent with the request that was accepted
    grace_seconds: int | None = None
    #: requests to leave sent for this pod (evictions and deletes, retries included)
    requests: int = 0
    #: loop time the API server first answered a request to leave for this pod
    asked_at: float | None = None
    #: loop time it was seen gone
    gone_at: float | None = None


@dataclass(frozen=True, slots=True)
class DrainOutcome:
    node: str
    result: DrainResult
    pods: tuple[PodReport, ...]
    deadline: float
    started_at: float
    finished_at: float
    #: loop time the first request to leave was handed to the client
    first_request_at: float | None
    #: loop time the API server had answered a request to leave for every pod to move
    all_asked_at: float | None
    #: loop time the last pod to move was seen gone (None unless they all left)
    empty_at: float | None
    #: API requests sent: list, watch, evictions, deletes
    api_requests: int
    dry_run: bool
    #: why the drain could not act at all (the pod list failed)
    error: str = ""

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((o.value for o in PodOutcome), 0)
        for pod in self.pods:
            counts[pod.outcome.value] += 1
        return counts

    def with_outcome(self, *outcomes: PodOutcome) -> tuple[PodReport, ...]:
        return tuple(p for p in self.pods if p.outcome in outcomes)


def overall_result(reports: Iterable[PodReport], *, listed: bool) -> DrainResult:
    if not listed:
        return DrainResult.FAILED
    moving = [r for r in reports if r.outcome is not PodOutcome.SKIPPED]
    remaining = [r for r in moving if r.outcome not in LEFT]
    if not remaining:
        return DrainResult.DRAINED
    if any(r.outcome in LEFT or r.asked_at is not None for r in moving):
        return DrainResult.PARTIAL
    return DrainResult.FAILED


@dataclass(frozen=True, slots=True)
class PodHold:
    """Do not ask a pod to leave before ``until`` (loop time), unless ``released`` is set first.

    A pipeline step that is saving its checkpoint must exit by itself: evicted, it would be
    "deleted" (not retried by Argo) instead of "failed" (retried). Its requester releases the
    hold as soon as the step will not exit by itself (no answer, an error)."""

    until: float
    released: asyncio.Event = field(default_factory=asyncio.Event)


def backoff(attempt: int, options: DrainOptions, rng: random.Random) -> float:
    """Exponential from ``retry_min`` to ``retry_max``, jittered down by up to half."""
    ceiling = min(options.retry_max, options.retry_min * 2.0 ** min(attempt, 16))
    return max(options.retry_min / 2, ceiling * rng.uniform(0.5, 1.0))


async def drain_node(
    kube: KubeClient,
    node: str,
    *,
    deadline: float,
    log: Logger,
    options: DrainOptions | None = None,
    holds: Mapping[tuple[str, str], PodHold] | None = None,
    listing: tuple[list[JSON], str] | None = None,
    rng: random.Random | None = None,
) -> DrainOutcome:
    """Move the pods off ``node`` (already cordoned by the caller) before ``deadline``.

    ``deadline`` is an event-loop time; grace periods are cut to fit it, and the drain returns
    by it (or ``options.min_window`` after the start, when it had nearly passed already).
    ``holds`` keeps some pods (pipeline steps saving a checkpoint) from being asked to leave
    until their hold ends: at its time, when it is released, or when the pod leaves or finishes
    by itself. ``listing`` is the node's pods and the list's resourceVersion when the caller has
    just read them (the checkpoint round does): the drain starts from it instead of listing again,
    and its watch from that resourceVersion sees every pod bound since. Never raises for an API
    failure.
    """
    drain = _Drain(
        kube,
        node,
        deadline=deadline,
        options=options or DrainOptions(),
        holds=holds or {},
        log=log.bind(node=node),
        rng=rng or random.Random(),
    )
    return await drain.run(listing)


@dataclass(slots=True)
class _Pod:
    """One pod to move, as the drain learns about it (mutable; frozen into a PodReport)."""

    ref: PodRef
    own_grace: int
    hold: PodHold | None = None
    requests: int = 0
    asked_at: float | None = None
    #: EVICTED or DELETED_AFTER_PDB once a request to leave was accepted
    accepted: PodOutcome | None = None
    #: BLOCKED or FAILED once the drain gave up on it
    refused: PodOutcome | None = None
    reason: str = ""
    grace: int | None = None
    last_error: str = ""
    gone_at: float | None = None
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    def settled(self, *, dry_run: bool) -> bool:
        """Nothing more to wait for (in dry-run, nothing is sent, so nothing leaves)."""
        if dry_run and self.accepted is not None:
            return True
        return self.gone_at is not None or self.refused is not None


class _Drain:
    def __init__(
        self,
        kube: KubeClient,
        node: str,
        *,
        deadline: float,
        options: DrainOptions,
        holds: Mapping[tuple[str, str], PodHold],
        log: Logger,
        rng: random.Random,
    ) -> None:
        self._kube = kube
        self._node = node
        self._deadline = deadline
        self._loop = asyncio.get_running_loop()
        self._started_at = self._loop.time()
        # A notice first seen already Started has its deadline now: still ask every pod to
        # leave (with the minimal grace) rather than give up before the first request.
        self._until = max(deadline, self._started_at + options.min_window)
        self._options = options
        self._holds = holds
        self._log = log
        self._rng = rng
        self._slots = asyncio.Semaphore(options.concurrency)
        self._query = {"fieldSelector": f"spec.nodeName={node}"}
        self._pods: dict[str, _Pod] = {}  # by uid
        self._by_key: dict[tuple[str, str], _Pod] = {}  # the latest pod of each name
        self._skipped: dict[str, PodReport] = {}  # by uid
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._first_request_at: float | None = None
        self._listed_at: float | None = None
        self._requests = 0

    # --- the drain, start to end -----------------------------------------------------------

    async def run(self, given: tuple[list[JSON], str] | None = None) -> DrainOutcome:
        self._log.info("drain_started", seconds_left=round(self._deadline - self._started_at, 3))
        try:
            listing = given if given is not None else await self._list_until_deadline()
            if isinstance(listing, str):
                return self._outcome(error=listing)
            items, resource_version = listing
            self._listed_at = self._loop.time()
            for pod in items:
                self._adopt(pod)
            self._log.info(
                "drain_planned",
                to_move=len(self._pods),
                skipped=len(self._skipped),
                dry_run=self._options.dry_run,
            )
            watcher = None
            if not self._options.dry_run:
                watcher = asyncio.create_task(self._watch(resource_version), name="drain-watch")
            try:
                await self._wait()
            finally:
                await self._stop(watcher)
            return self._outcome()
        except Exception as exc:  # a bug must not take the responder down with it
            self._log.exception("drain_crashed")
            return self._outcome(error=f"drain crashed: {exc!r}")

    def _adopt(self, obj: JSON) -> None:
        """Plan a pod first seen in the list or, arriving later, on the watch."""
        ref = pod_ref(obj)
        if ref.uid in self._pods or ref.uid in self._skipped:
            return
        reason = skip_reason(obj, self._options)
        if reason is not None:
            self._skip(ref, reason)
            return
        pod = _Pod(ref=ref, own_grace=own_grace(obj), hold=self._holds.get(ref.key))
        self._pods[ref.uid] = pod
        self._by_key[ref.key] = pod
        task = asyncio.create_task(self._move(pod), name=f"drain-{ref}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _skip(self, ref: PodRef, reason: SkipReason) -> None:
        self._skipped[ref.uid] = PodReport(
            ref.namespace, ref.name, ref.uid, PodOutcome.SKIPPED, reason=reason.value
        )
        self._log.debug("pod_skipped", pod=str(ref), reason=reason.value)

    async def _wait(self) -> None:
        """Until every pod to move has settled, or the deadline."""
        while not self._all_settled():
            left = self._left()
            if left <= 0:
                self._log.warning("drain_deadline_reached", unsettled=self._unsettled())
                return
            self._changed.clear()
            if self._all_settled():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=left)

    def _all_settled(self) -> bool:
        return all(p.settled(dry_run=self._options.dry_run) for p in self._pods.values())

    def _unsettled(self) -> int:
        return sum(not p.settled(dry_run=self._options.dry_run) for p in self._pods.values())

    async def _stop(self, watcher: asyncio.Task[None] | None) -> None:
        tasks = [*self._tasks, *([watcher] if watcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _left(self) -> float:
        """Time left to work: to the deadline, or to the end of the minimal window."""
        return self._until - self._loop.time()

    def _grace(self, pod: _Pod) -> int:
        # A pod that uses its whole grace is killed at its end, and its deletion still has to
        # reach the API server and us: keep that headroom before the deadline.
        left = self._deadline - self._loop.time() - self._options.grace_headroom
        return grace_for(pod.own_grace, left, minimum=self._options.min_grace)

    # --- one pod -------------------------------------------------------------------------

    async def _move(self, pod: _Pod) -> None:
        try:
            if pod.hold is not None:
                await self._hold(pod, pod.hold)
            if pod.gone.is_set():
                return
            await self._evict(pod)
        except Exception as exc:
            self._log.exception("pod_move_crashed", pod=str(pod.ref))
            pod.refused, pod.reason = PodOutcome.FAILED, f"crashed: {exc!r}"
        finally:
            self._changed.set()

    async def _hold(self, pod: _Pod, hold: PodHold) -> None:
        wait = min(hold.until, self._until) - self._loop.time()
        if wait <= 0 or hold.released.is_set():
            return
        if self._options.dry_run:
            self._log.info("dry_run_hold", pod=str(pod.ref), seconds=round(wait, 3))
            return
        self._log.info("pod_held", pod=str(pod.ref), seconds=round(wait, 3))
        released = asyncio.create_task(hold.released.wait())
        gone = asyncio.create_task(pod.gone.wait())
        try:
            await asyncio.wait({released, gone}, timeout=wait, return_when=FIRST_COMPLETED)
        finally:
            released.cancel()
            gone.cancel()
        if hold.released.is_set() and not pod.gone.is_set():
            self._log.info("pod_hold_released", pod=str(pod.ref))

    async def _evict(self, pod: _Pod) -> None:
        attempt = 0
        while not pod.gone.is_set() and self._left() > MIN_REQUEST_WINDOW:
            grace = self._grace(pod)
            body = eviction_body(pod.ref, grace)
            error = await self._send(pod, "POST", pod_path(pod.ref) + "/eviction", body)
            if error is None:
                self._accepted(pod, PodOutcome.EVICTED, grace)
                return
            refusal = classify_refusal(error)
            pause = backoff(attempt, self._options, self._rng)
            attempt += 1
            if refusal is Refusal.PDB:
                now = self._loop.time()
                if not pdb_wait_fits(
                    now=now,
                    pause=pause,
                    own=pod.own_grace,
                    deadline=self._deadline,
                    stop_budget=self._options.stop_budget,
                ):
                    await self._on_pdb_block(
                        pod, "disruption budget still refused when only the stop budget was left"
                    )
                    return
                if attempt == 1:
                    self._log.info(
                        "pod_eviction_refused_by_pdb", pod=str(pod.ref), error=str(error)
                    )
            elif refusal is Refusal.PDB_MISCONFIGURED:
                await self._on_pdb_block(pod, f"disruption budget misconfigured: {error}")
                return
            elif not self._retry(pod, refusal, error):
                return
            await self._pause(pod, self._pause_for(refusal, error, pause))

    async def _on_pdb_block(self, pod: _Pod, why: str) -> None:
        if not self._options.delete_on_pdb_block:
            pod.refused, pod.reason = PodOutcome.BLOCKED, why
            self._log.warning("pod_blocked_by_pdb", pod=str(pod.ref), reason=why)
            return
        self._log.warning("pod_delete_after_pdb", pod=str(pod.ref), reason=why)
        pod.reason = why
        await self._delete(pod)

    async def _delete(self, pod: _Pod) -> None:
        attempt = 0
        while not pod.gone.is_set() and self._left() > MIN_REQUEST_WINDOW:
            grace = self._grace(pod)
            error = await self._send(pod, "DELETE", pod_path(pod.ref), delete_body(pod.ref, grace))
            if error is None:
                self._accepted(pod, PodOutcome.DELETED_AFTER_PDB, grace)
                return
            refusal = classify_refusal(error)
            pause = backoff(attempt, self._options, self._rng)
            attempt += 1
            # A budget has no say over a delete; a 429 here is API Priority and Fairness.
            if refusal in (Refusal.PDB, Refusal.PDB_MISCONFIGURED):
                refusal = Refusal.THROTTLED
            if not self._retry(pod, refusal, error):
                return
            await self._pause(pod, self._pause_for(refusal, error, pause))

    def _retry(self, pod: _Pod, refusal: Refusal, error: KubeError) -> bool:
        """Record a refusal that is not about budgets; whether to try again."""
        if refusal is Refusal.GONE:
            self._gone(pod, f"already gone: {error.status}")
            return False
        if refusal is Refusal.FATAL:
            pod.refused, pod.reason = PodOutcome.FAILED, str(error)
            self._log.error("pod_move_failed", pod=str(pod.ref), error=str(error))
            return False
        self._log.debug(
            "pod_request_retry", pod=str(pod.ref), refusal=refusal.value, error=str(error)
        )
        return True

    @staticmethod
    def _pause_for(refusal: Refusal, error: KubeError, backoff_s: float) -> float:
        if refusal is Refusal.THROTTLED and error.retry_after is not None:
            return max(error.retry_after, backoff_s / 2)
        return backoff_s

    async def _pause(self, pod: _Pod, seconds: float) -> None:
        """Sleep, bounded by the deadline; wake early if the pod leaves."""
        seconds = min(seconds, self._left())
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pod.gone.wait(), timeout=seconds)

    def _accepted(self, pod: _Pod, outcome: PodOutcome, grace: int) -> None:
        pod.accepted, pod.grace = outcome, grace
        self._log.info(
            "pod_asked_to_leave", pod=str(pod.ref), how=outcome.value, grace_seconds=grace
        )

    # --- requests ------------------------------------------------------------------------

    async def _send(self, pod: _Pod, method: str, path: str, body: JSON) -> KubeError | None:
        """One request to leave; the error, or None when accepted (or, in dry-run, logged)."""
        if self._options.dry_run:
            self._log.info("dry_run_write", verb=method, path=path, body=body)
            if pod.asked_at is None:
                pod.asked_at = self._loop.time()
            return None
        async with self._slots:
            now = self._loop.time()
            if self._first_request_at is None:
                self._first_request_at = now
            pod.requests += 1
            self._requests += 1
            timeout = min(self._options.request_timeout, max(self._left(), MIN_REQUEST_WINDOW))
            try:
                await self._kube.request(method, path, body=body, timeout=timeout)
            except KubeError as exc:
                pod.last_error = str(exc)
                if exc.status and pod.asked_at is None:
                    pod.asked_at = self._loop.time()
                return exc
            if pod.asked_at is None:
                pod.asked_at = self._loop.time()
            return None

    async def _list(self) -> tuple[list[JSON], str]:
        self._requests += 1
        timeout = min(self._options.request_timeout, max(self._left(), MIN_REQUEST_WINDOW))
        answer = await self._kube.request("GET", PODS_PATH, query=self._query, timeout=timeout)
        items = [i for i in answer.get("items") or () if isinstance(i, dict)]
        return items, str((answer.get("metadata") or {}).get("resourceVersion") or "")

    async def _list_until_deadline(self) -> tuple[list[JSON], str] | str:
        """The pods on the node and the list's resourceVersion, or why they could not be read."""
        attempt = 0
        while True:
            try:
                return await self._list()
            except KubeError as exc:
                error = exc
            self._log.warning("pod_list_failed", error=str(error))
            pause = backoff(attempt, self._options, self._rng)
            if error.status == 429 and error.retry_after is not None:
                pause = error.retry_after
            attempt += 1
            if not error.transient or pause >= self._left():
                return f"cannot list the pods on the node: {error}"
            await asyncio.sleep(pause)

    # --- following the pods ----------------------------------------------------------------

    async def _watch(self, resource_version: str) -> None:
        """Watch the node's pods from ``resource_version``; re-list and re-watch on failure."""
        attempt = 0
        while self._left() > 0:
            try:
                resource_version = await self._watch_once(resource_version)
                attempt = 0
                continue  # the server ended the stream: resume where it stopped
            except KubeError as exc:
                self._log.info("pod_watch_failed", error=str(exc), status=exc.status)
            await asyncio.sleep(
                min(backoff(attempt, self._options, self._rng), max(self._left(), 0))
            )
            attempt += 1
            try:
                items, resource_version = await self._list()
            except KubeError as exc:
                self._log.info("pod_relist_failed", error=str(exc))
                continue
            self._reconcile(items)

    async def _watch_once(self, resource_version: str) -> str:
        self._requests += 1
        query: dict[str, str | int | bool] = {
            **self._query,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": True,
        }
        stream = self._kube.watch(
            PODS_PATH, query=query, timeout_seconds=max(1, math.ceil(self._left()))
        )
        async with contextlib.aclosing(stream):
            async for event in stream:
                resource_version = _resource_version(event.object) or resource_version
                self._observe(event)
        return resource_version

    def _observe(self, event: WatchEvent) -> None:
        if event.type not in ("ADDED", "MODIFIED", "DELETED"):
            return
        obj = event.object
        ref = pod_ref(obj)
        if event.type != "DELETED" and not finished(obj):
            self._replaced(ref)
        pod = self._pods.get(ref.uid)
        if pod is None:
            if event.type != "DELETED":
                self._adopt(obj)  # arrived after the list (bound before the cordon took effect)
            return
        if event.type == "DELETED":
            self._gone(pod, "deleted")
        elif finished(obj):
            self._gone(pod, "finished")

    def _replaced(self, ref: PodRef) -> None:
        """A pod with the name of one we move but another uid: ours is gone (StatefulSet)."""
        pod = self._by_key.get(ref.key)
        if pod is not None and pod.ref.uid != ref.uid:
            self._gone(pod, "replaced")

    def _reconcile(self, items: list[JSON]) -> None:
        """After a re-list: what the watch missed."""
        present = {pod_ref(i).uid: i for i in items}
        for pod in self._pods.values():
            obj = present.get(pod.ref.uid)
            if obj is None:
                self._gone(pod, "absent from the list")
            elif finished(obj):
                self._gone(pod, "finished")
        for obj in items:
            self._adopt(obj)

    def _gone(self, pod: _Pod, how: str) -> None:
        if pod.gone_at is not None:
            return
        pod.gone_at = self._loop.time()
        pod.gone.set()
        self._changed.set()
        self._log.debug("pod_gone", pod=str(pod.ref), how=how)
        if pod.accepted is None and not pod.reason:
            pod.reason = how

    # --- the result --------------------------------------------------------------------------

    def _report(self, pod: _Pod) -> PodReport:
        outcome, reason = self._final(pod)
        return PodReport(
            namespace=pod.ref.namespace,
            name=pod.ref.name,
            uid=pod.ref.uid,
            outcome=outcome,
            reason=reason,
            grace_seconds=pod.grace,
            requests=pod.requests,
            asked_at=pod.asked_at,
            gone_at=pod.gone_at,
        )

    def _final(self, pod: _Pod) -> tuple[PodOutcome, str]:
        if self._options.dry_run and pod.accepted is not None:
            return pod.accepted, "dry-run: not sent"
        if pod.gone_at is not None:
            return (pod.accepted or PodOutcome.GONE), pod.reason
        if pod.refused is not None:
            return pod.refused, pod.reason
        if pod.accepted is not None:
            return PodOutcome.STILL_PRESENT, f"{pod.accepted.value}; still there at the deadline"
        if pod.last_error:
            return PodOutcome.FAILED, f"no request accepted before the deadline: {pod.last_error}"
        if pod.requests:
            return PodOutcome.STILL_PRESENT, "request to leave still unanswered at the deadline"
        return PodOutcome.STILL_PRESENT, "not asked before the deadline"

    def _all_asked_at(self) -> float | None:
        """When every pod to move had been asked (those that left unasked need not be)."""
        times: list[float] = []
        for pod in self._pods.values():
            if pod.asked_at is not None:
                times.append(pod.asked_at)
            elif pod.gone_at is None:
                return None
        return max(times, default=None)

    def _empty_at(self) -> float | None:
        if self._options.dry_run or self._listed_at is None:
            return None
        times = [p.gone_at for p in self._pods.values()]
        if any(t is None for t in times):
            return None
        return max((t for t in times if t is not None), default=self._listed_at)

    def _outcome(self, *, error: str = "") -> DrainOutcome:
        finished_at = self._loop.time()
        reports = [*(self._report(p) for p in self._pods.values()), *self._skipped.values()]
        pods = tuple(sorted(reports, key=lambda r: (r.namespace, r.name, r.uid)))
        outcome = DrainOutcome(
            node=self._node,
            result=overall_result(pods, listed=not error),
            pods=pods,
            deadline=self._deadline,
            started_at=self._started_at,
            finished_at=finished_at,
            first_request_at=self._first_request_at,
            all_asked_at=self._all_asked_at(),
            empty_at=self._empty_at(),
            api_requests=self._requests,
            dry_run=self._options.dry_run,
            error=error,
        )
        self._log.info(
            "drain_finished",
            result=outcome.result.value,
            counts={k: v for k, v in outcome.counts.items() if v},
            seconds=round(finished_at - self._started_at, 3),
            margin=round(self._deadline - finished_at, 3),
            api_requests=self._requests,
            error=error or None,
        )
        return outcome


def _resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
