"""Azure IMDS: the HTTP client and the Scheduled Events poller.

Rules Azure sets and this module keeps: header ``Metadata: true`` on every request; never through a
proxy (the session must not trust ``*_PROXY``; IMDS rejects ``X-Forwarded-For``); an explicit
timeout on every request; at most 5 requests/s per VM for everything sent to IMDS (the
``RequestSpacer`` keeps this process below that whatever errors come back); 410 Gone retried for
up to 70 s (the feature is being enabled); 429 and 5xx retried with capped exponential backoff and
jitter; the first Scheduled Events request enables the feature and may take up to two minutes.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import structlog

from spotguard.clock import Clock
from spotguard.errors import (
    IdentityError,
    ImdsError,
    ImdsHttpError,
    ImdsUnavailable,
    InvalidDocument,
)
from spotguard.httpio import BodyTooLarge, read_capped
from spotguard.model import ScheduledEventsDocument
from spotguard.observability.metrics import Metrics
from spotguard.sources.identity import vm_name_from_compute
from spotguard.sources.imds_document import MAX_DOCUMENT_BYTES, parse_document

SCHEDULED_EVENTS_PATH = "/metadata/scheduledevents"
INSTANCE_PATH = "/metadata/instance"
#: Azure: "410 Gone — retry for up to 70 seconds".
GONE_RETRY_WINDOW = 70.0
#: Hard floor between two requests to IMDS from this process: 4/s, under Azure's 5/s per VM.
MIN_REQUEST_SPACING = 0.25

Logger = structlog.typing.FilteringBoundLogger
T = TypeVar("T")


def make_session() -> aiohttp.ClientSession:
    """A session for IMDS only: no proxies from the environment, no cookies, small pool."""
    return aiohttp.ClientSession(
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        connector=aiohttp.TCPConnector(limit=4, force_close=False),
        headers={"Metadata": "true"},
        raise_for_status=False,
    )


class RequestSpacer:
    """Spaces request starts at least ``spacing`` seconds apart (loop clock)."""

    def __init__(self, spacing: float = MIN_REQUEST_SPACING) -> None:
        self._spacing = spacing
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            now = loop.time()
            if now < self._next:
                await asyncio.sleep(self._next - now)
                now = loop.time()
            self._next = now + self._spacing


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None


class ImdsClient:
    """Talks to one IMDS endpoint. Raises ``ImdsError`` subclasses; never retries by itself."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        base_url: str,
        events_api_version: str,
        instance_api_version: str,
        request_timeout: float,
        spacer: RequestSpacer,
        metrics: Metrics,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._events_version = events_api_version
        self._instance_version = instance_api_version
        self._timeout = request_timeout
        self._spacer = spacer
        self._metrics = metrics

    async def _request(
        self,
        method: str,
        path: str,
        api_version: str,
        parse: Callable[[bytes], T],
        *,
        timeout: float | None = None,
        body: bytes | None = None,
    ) -> T:
        await self._spacer.wait()
        loop = asyncio.get_running_loop()
        started = loop.time()
        limit = timeout if timeout is not None else self._timeout
        outcome = "ok"
        try:
            async with self._session.request(
                method,
                f"{self._base}{path}",
                params={"api-version": api_version},
                headers={"Metadata": "true"},
                data=body,
                timeout=aiohttp.ClientTimeout(total=limit),
                allow_redirects=False,
                proxy=None,
            ) as response:
                try:
                    payload = await read_capped(response, MAX_DOCUMENT_BYTES)
                except BodyTooLarge as exc:
                    raise InvalidDocument(str(exc)) from None
                if response.status != 200:
                    raise ImdsHttpError(
                        response.status,
                        payload.decode("utf-8", "replace"),
                        retry_after=_retry_after(response.headers),
                    )
                return parse(payload)
        except ImdsError as exc:
            outcome = exc.outcome
            raise
        except TimeoutError:
            outcome = "timeout"
            raise ImdsUnavailable(f"IMDS did not answer within {limit:g}s", timeout=True) from None
        except aiohttp.ClientError as exc:
            outcome = "connection_error"
            raise ImdsUnavailable(f"cannot reach IMDS: {exc}", timeout=False) from exc
        finally:
            self._metrics.imds_requests.labels(outcome=outcome).inc()
            self._metrics.imds_request_duration.observe(loop.time() - started)

    async def scheduled_events(self, *, timeout: float | None = None) -> ScheduledEventsDocument:
        return await self._request(
            "GET", SCHEDULED_EVENTS_PATH, self._events_version, parse_document, timeout=timeout
        )

    async def instance_compute(self) -> dict[str, Any]:
        """IMDS instance metadata ``compute`` section (identity)."""
        return await self._request("GET", INSTANCE_PATH, self._instance_version, _parse_compute)

    async def start_events(self, event_ids: Sequence[str]) -> None:
        """Acknowledge events (POST StartRequests): they may then start for every listed VM."""
        body = json.dumps({"StartRequests": [{"EventId": e} for e in event_ids]}).encode()
        await self._request(
            "POST", SCHEDULED_EVENTS_PATH, self._events_version, lambda _: None, body=body
        )


def _parse_compute(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidDocument(f"instance metadata is not JSON: {exc}") from None
    compute = data.get("compute") if isinstance(data, dict) else None
    if not isinstance(compute, dict):
        raise InvalidDocument("instance metadata has no compute section")
    return compute


class ImdsPoller:
    """Polls Scheduled Events at a fixed rate and hands every valid document on.

    It never acts and never raises for IMDS trouble: errors are counted, logged and retried with
    backoff, and the last good state stays with the consumer. ``last_success`` (loop time) tells
    the health checks whether the agent is blind.
    """

    def __init__(
        self,
        *,
        client: ImdsClient,
        on_document: Callable[[ScheduledEventsDocument, datetime], None],
        clock: Clock,
        metrics: Metrics,
        log: Logger,
        interval: float,
        max_backoff: float,
        enable_timeout: float,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._on_document = on_document
        self._clock = clock
        self._metrics = metrics
        self._log = log
        self._interval = interval
        self._max_backoff = max(max_backoff, interval)
        self._enable_timeout = enable_timeout
        self._rng = rng or random.Random()
        self._failures = 0
        self._gone_since: float | None = None
        self._answered = False
        #: loop time of the last valid document, None before the first one
        self.last_success: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            delay = await self.poll_once()
            # Spacing is measured from the start of the request, so a slow answer does not add
            # to the interval, and an error only ever lengthens it.
            await asyncio.sleep(max(0.0, started + delay - loop.time()))

    async def poll_once(self) -> float:
        """One request; returns the delay until the next one should start."""
        loop = asyncio.get_running_loop()
        # Until IMDS has answered at all, allow the long first-call time that enabling takes.
        timeout = None if self._answered else self._enable_timeout
        try:
            document = await self._client.scheduled_events(timeout=timeout)
        except ImdsHttpError as exc:
            self._answered = True
            if exc.status == 410:
                return self._on_gone(loop.time(), exc)
            self._gone_since = None
            return self._on_error(exc, retry_after=exc.retry_after)
        except ImdsError as exc:
            if isinstance(exc, InvalidDocument):
                self._answered = True
            self._gone_since = None
            return self._on_error(exc, retry_after=None)
        self._answered = True
        self._gone_since = None
        if self._failures:
            self._log.info("imds_recovered", after_failures=self._failures)
        self._failures = 0
        self.last_success = loop.time()
        self._metrics.imds_last_success.set(self._clock.now().timestamp())
        for rejected in document.rejected:
            self._metrics.imds_invalid_events.inc()
            self._log.warning(
                "imds_event_ignored",
                event_id=rejected.event_id,
                reason=rejected.reason,
                incarnation=document.incarnation,
            )
        self._on_document(document, self._clock.now())
        return self._interval

    def _on_gone(self, now: float, exc: ImdsHttpError) -> float:
        if self._gone_since is None:
            self._gone_since = now
            self._log.info("imds_enabling", hint="IMDS answered 410 Gone; retrying for 70s")
        if now - self._gone_since <= GONE_RETRY_WINDOW:
            return self._interval
        return self._on_error(exc, retry_after=None)

    def _on_error(self, exc: ImdsError, *, retry_after: float | None) -> float:
        self._failures += 1
        # Full jitter over a doubling ceiling, never below the poll interval.
        ceiling = min(self._max_backoff, self._interval * 2 ** min(self._failures, 16))
        delay = self._rng.uniform(self._interval, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_backoff))
        # During an outage one line per poll would bury everything else: say it on the first
        # failure and then every tenth; each is counted in the metrics regardless.
        emit = self._log.warning if self._failures % 10 == 1 else self._log.debug
        emit(
            "imds_request_failed",
            outcome=exc.outcome,
            error=str(exc),
            failures=self._failures,
            retry_in_s=round(delay, 3),
        )
        return delay


async def wait_for_vm_name(
    client: ImdsClient, *, log: Logger, retry_interval: float, hint_after: float
) -> str:
    """This VM's name from IMDS instance metadata, retried until IMDS answers.

    An IMDS that cannot be reached is usually a networking matter (no host network on a pool
    where pods cannot reach link-local addresses), not something a restart fixes, so this waits
    and, after ``hint_after`` seconds, says what to check.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    hinted = False
    while True:
        try:
            return vm_name_from_compute(await client.instance_compute())
        except (ImdsError, IdentityError) as exc:
            waited = loop.time() - started
            if not hinted and waited >= hint_after:
                hinted = True
                log.error(
                    "imds_unreachable",
                    error=str(exc),
                    waited_s=round(waited, 1),
                    hint="IMDS (169.254.169.254) cannot be reached from this pod: on node pools "
                    "where pods get no link-local access (podLinkLocalAccess=None) run the agent "
                    "with host networking, or set SPOTGUARD_IMDS_URL",
                )
            else:
                log.warning("vm_identity_pending", error=str(exc))
        await asyncio.sleep(retry_interval)
