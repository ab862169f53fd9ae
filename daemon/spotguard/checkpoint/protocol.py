"""Agent side of checkpoint-and-yield: ask this node's pipeline steps to save, all at once.

On a notice the responder starts a round beside the cordon: one list of the node's pods, one
Secret read per namespace, then every opted-in step gets its ``POST`` concurrently. The round
hands the drain a hold per step, so no step is evicted while it may still be saving: a step that
answered exits by itself with its yield code (Argo retries a *failed* step, not a deleted one);
one that did not answer, or answered with an error, is released to the drain at once and evicted
normally, its SIGTERM handler being the fallback. Everything is bounded by the checkpoint
deadline (notice deadline minus the stop budget). Each step's result is written on its pod.

Times are event-loop times; the wall-clock deadline is only sent to the steps.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import structlog

from spotguard.checkpoint.targets import (
    EXITS_BY_ITSELF,
    RESULT_ANNOTATION,
    TOKEN_KEY,
    TOKEN_SECRET,
    Outcome,
    Result,
    Target,
    outcome_of_status,
    parse_answer,
    target,
)
from spotguard.clock import Clock, rfc3339
from spotguard.httpio import BodyTooLarge, read_capped
from spotguard.kube.client import JSON, KubeClient, KubeError
from spotguard.kube.drain import PodHold
from spotguard.kube.pods import pod_path

Logger = structlog.typing.FilteringBoundLogger

PODS_PATH = "/api/v1/pods"
MERGE_PATCH = "application/merge-patch+json"
#: Below this much time before the checkpoint deadline no step could save: do not ask.
MIN_WINDOW = 1.0
#: A step's answer is about 100 bytes.
MAX_ANSWER_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class RoundRequest:
    """What the steps are told, and by when they must have answered (loop time)."""

    event_id: str
    kind: str
    node: str
    deadline: float
    deadline_wall: datetime

    def body(self) -> JSON:
        return {
            "event_id": self.event_id,
            "kind": self.kind,
            "node": self.node,
            "deadline": rfc3339(self.deadline_wall),
        }


@dataclass(slots=True)
class CheckpointRound:
    """One notice's requests: the holds for the drain now, the results once ``wait()`` ends."""

    request: RoundRequest
    targets: tuple[Target, ...] = ()
    holds: dict[tuple[str, str], PodHold] = field(default_factory=dict)
    #: why no step was asked (the pod list failed, no time left); empty otherwise
    error: str = ""
    #: the node's pods and the list's resourceVersion, for the drain to start from
    listing: tuple[list[JSON], str] | None = None
    #: set once every step's request is on its way (or will not be sent)
    all_sent: asyncio.Event = field(default_factory=asyncio.Event)
    _unsent: int = 0
    _task: asyncio.Task[tuple[Result, ...]] | None = None

    def _one_sent(self) -> None:
        self._unsent -= 1
        if self._unsent <= 0:
            self.all_sent.set()

    async def wait(self) -> tuple[Result, ...]:
        if self._task is None:
            return ()
        return await self._task

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for hold in self.holds.values():
            hold.released.set()


class CheckpointRequester:
    def __init__(
        self,
        *,
        kube: KubeClient,
        http: aiohttp.ClientSession,
        clock: Clock,
        dry_run: bool,
        api_timeout: float,
        log: Logger,
    ) -> None:
        self._kube = kube
        self._http = http
        self._clock = clock
        self._dry_run = dry_run
        self._api_timeout = api_timeout
        self._log = log
        self._loop = asyncio.get_running_loop()

    async def start(self, request: RoundRequest, log: Logger) -> CheckpointRound:
        """List the node's steps and send their requests; returns once the holds are known.

        Never raises for an API or network failure: the round then asks no one (or fewer).
        """
        round_ = CheckpointRound(request)
        left = request.deadline - self._loop.time()
        if left < MIN_WINDOW:
            round_.error = f"only {max(left, 0):.1f}s left before the checkpoint deadline"
            round_.all_sent.set()
            log.info("checkpoint_no_time", seconds_left=round(left, 3))
            return round_
        query = {"fieldSelector": f"spec.nodeName={request.node}"}
        try:
            pods = await self._kube.request(
                "GET", PODS_PATH, query=query, timeout=min(self._api_timeout, left)
            )
        except KubeError as exc:
            round_.error = f"cannot list the pods on the node: {exc}"
            round_.all_sent.set()
            log.warning("checkpoint_list_failed", error=str(exc))
            return round_
        items = [p for p in pods.get("items") or () if isinstance(p, dict)]
        version = str((pods.get("metadata") or {}).get("resourceVersion") or "")
        if version:
            round_.listing = (items, version)
        found = [target(p) for p in items]
        round_.targets = tuple(t for t in found if t is not None)
        if not round_.targets:
            round_.all_sent.set()
            return round_
        round_._unsent = len(round_.targets)
        for step in round_.targets:
            if not step.problem:
                round_.holds[step.ref.key] = PodHold(request.deadline)
        round_._task = asyncio.create_task(
            self._ask_all(round_, log), name=f"checkpoints-{request.event_id}"
        )
        return round_

    async def _ask_all(self, round_: CheckpointRound, log: Logger) -> tuple[Result, ...]:
        namespaces = {t.ref.namespace for t in round_.targets if not t.problem}
        tokens = {
            ns: asyncio.create_task(self._token(ns, round_.request.deadline)) for ns in namespaces
        }
        try:
            results = await asyncio.gather(
                *(self._ask(step, round_, tokens, log) for step in round_.targets)
            )
        finally:
            for task in tokens.values():
                task.cancel()
        return tuple(results)

    async def _token(self, namespace: str, deadline: float) -> str:
        """The namespace's checkpoint token; ``_NoToken`` says why there is none."""
        path = f"/api/v1/namespaces/{namespace}/secrets/{TOKEN_SECRET}"
        timeout = max(0.05, min(self._api_timeout, deadline - self._loop.time()))
        try:
            secret = await self._kube.request("GET", path, timeout=timeout)
        except KubeError as exc:
            if exc.status == 404:
                raise _NoToken(f"Secret {namespace}/{TOKEN_SECRET} not found") from None
            raise _NoToken(f"cannot read Secret {namespace}/{TOKEN_SECRET}: {exc}") from None
        encoded = (secret.get("data") or {}).get(TOKEN_KEY)
        if not isinstance(encoded, str) or not encoded:
            raise _NoToken(f"Secret {namespace}/{TOKEN_SECRET} has no key {TOKEN_KEY!r}")
        try:
            token = base64.b64decode(encoded, validate=True).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            raise _NoToken(
                f"Secret {namespace}/{TOKEN_SECRET}: {TOKEN_KEY!r} is not base64 text"
            ) from None
        if not token or any(c.isspace() for c in token):
            raise _NoToken(f"Secret {namespace}/{TOKEN_SECRET}: {TOKEN_KEY!r} is not a token")
        return token

    async def _ask(
        self,
        step: Target,
        round_: CheckpointRound,
        tokens: Mapping[str, asyncio.Task[str]],
        log: Logger,
    ) -> Result:
        log = log.bind(pod=str(step.ref))
        hold = round_.holds.get(step.ref.key)
        marked = False

        def mark_sent() -> None:
            nonlocal marked
            if not marked:
                marked = True
                round_._one_sent()

        try:
            result = await self._result(step, round_.request, tokens, log, mark_sent)
        except Exception as exc:  # a bug here must not keep a step from being evicted
            log.exception("checkpoint_crashed")
            result = Result(step.ref.namespace, step.ref.name, Outcome.NOT_SAVED, error=repr(exc))
        finally:
            mark_sent()  # not sent at all (bad annotations, no token, dry-run) counts too
        if hold is not None and result.outcome not in EXITS_BY_ITSELF:
            hold.released.set()
        emit = log.info if result.outcome in EXITS_BY_ITSELF else log.warning
        emit(
            "checkpoint_answered",
            result=result.outcome.value,
            status=result.status,
            seconds=round(result.seconds, 3),
            location=result.location or None,
            bytes=result.size,
            error=result.error or None,
        )
        if result.outcome is not Outcome.DRY_RUN:
            await self._record(step, round_.request, result, log)
        return result

    async def _result(
        self,
        step: Target,
        request: RoundRequest,
        tokens: Mapping[str, asyncio.Task[str]],
        log: Logger,
        mark_sent: Callable[[], None],
    ) -> Result:
        ns, name = step.ref.namespace, step.ref.name
        if step.problem:
            return Result(ns, name, Outcome.INVALID, error=step.problem)
        try:
            token = await tokens[ns]
        except _NoToken as exc:
            return Result(ns, name, Outcome.NO_TOKEN, error=str(exc))
        if self._dry_run:
            log.info("dry_run_checkpoint", url=step.url, body=request.body())
            return Result(ns, name, Outcome.DRY_RUN)
        left = request.deadline - self._loop.time()
        if left <= 0:
            return Result(ns, name, Outcome.TIMEOUT, error="checkpoint deadline passed")
        sent_at = self._loop.time()
        mark_sent()
        try:
            async with asyncio.timeout(left):
                async with self._http.post(
                    step.url,
                    json=request.body(),
                    headers={"Authorization": f"Bearer {token}"},
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=left),
                ) as response:
                    status = response.status
                    body = await read_capped(response, MAX_ANSWER_BYTES)
        except TimeoutError:
            return Result(
                ns,
                name,
                Outcome.TIMEOUT,
                seconds=self._loop.time() - sent_at,
                error=f"no answer within {left:.1f}s",
                sent_at=sent_at,
            )
        except (aiohttp.ClientError, OSError, BodyTooLarge) as exc:
            return Result(
                ns,
                name,
                Outcome.UNREACHABLE,
                seconds=self._loop.time() - sent_at,
                error=f"{type(exc).__name__}: {exc}"[:300],
                sent_at=sent_at,
            )
        seconds = self._loop.time() - sent_at
        location, size, error = parse_answer(status, body)
        outcome = outcome_of_status(status)
        if outcome is Outcome.SAVED and error:
            outcome = Outcome.NOT_SAVED  # a 200 that does not say where is not a checkpoint
        return Result(
            ns,
            name,
            outcome,
            seconds=seconds,
            status=status,
            location=location,
            size=size,
            error=error,
            sent_at=sent_at,
        )

    async def _record(
        self, step: Target, request: RoundRequest, result: Result, log: Logger
    ) -> None:
        """The result on the pod, best effort: a pod already gone needs no record."""
        value = result.annotation(event_id=request.event_id, at=rfc3339(self._clock.now()) or "")
        body = {"metadata": {"annotations": {RESULT_ANNOTATION: value}}}
        try:
            await self._kube.request(
                "PATCH",
                pod_path(step.ref),
                body=body,
                content_type=MERGE_PATCH,
                timeout=self._api_timeout,
            )
        except KubeError as exc:
            if exc.status != 404:
                log.warning("checkpoint_result_not_recorded", error=str(exc))


class _NoToken(Exception):
    pass


async def stop_round(round_: CheckpointRound | None) -> None:
    """Cancel a round that is still running (the notice went away) and wait for it."""
    if round_ is None:
        return
    round_.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await round_.wait()
