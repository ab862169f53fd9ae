"""Direct alerts to Alertmanager (API v2): the agent speaks before its VM, and its metrics, vanish.

A Preempt notice gives 30 s at best; a scrape every 5 s may catch the agent's series once or not
at all. So the agent can post ``SpotguardPreemptionImminent`` (info) and ``SpotguardDeadlineMissed``
(page) itself, the moment it knows. Each carries exactly the labels ``alertname, severity, cluster,
nodepool, node`` (DESIGN.md, Contracts -> Metrics) — the label set the rule alerts of the same name
end up with — so Alertmanager merges the two into one alert (same fingerprint) and groups them
with the node's other alerts into one notification. An empty ``cluster`` or ``nodepool`` is
dropped by Alertmanager (empty means absent, as in Prometheus), like a rule alert without it.

Rules this module keeps:

- **It never delays the drain.** The caller runs it as a background task, and each call is
  bounded on its own as well: at most ``attempts`` requests, each with an explicit timeout, all
  inside ``budget`` seconds (default 5 s, well inside the 30 s notice).
- **It never raises** into the caller (cancellation aside): every call returns an ``Outcome``
  (``success``, ``error``, ``skipped``) whose value is the ``outcome`` label of
  ``spotguard_actions_total{action="alert"}``. Counting is the caller's job; this is a mechanism.
- **It ends by itself.** Every alert has an ``endsAt``: a dead agent cannot resolve what it
  raised, and Alertmanager's ``resolve_timeout`` applies only to alerts without one.
- **Dry-run** logs the alert that would be posted and sends nothing (``skipped``).

Composition root: when ``SPOTGUARD_ALERTMANAGER_URL`` is unset, no sink is built and the caller
holds ``None`` — there is no "disabled" mode in here. With one set::

    AlertmanagerSink(url=str(settings.alertmanager_url),
                     runbook_base_url=settings.runbook_base_url,
                     dry_run=settings.dry_run, clock=clock, log=log)

Proxies: unlike IMDS (which must never be proxied), Alertmanager is an ordinary HTTP service, so
the session this sink owns honours ``HTTP(S)_PROXY``/``NO_PROXY`` (aiohttp ``trust_env``). On AKS
with the HTTP proxy feature, pods get those variables injected and AKS's effective ``noProxy``
covers in-cluster endpoints; an Alertmanager elsewhere goes through the proxy, as every other
egress of the cluster does. Do not pass the IMDS session in: it ignores proxies on purpose.
"""

from __future__ import annotations

import asyncio
import enum
import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import aiohttp
import structlog
from yarl import URL

from spotguard.clock import Clock, rfc3339
from spotguard.model import Notice

Logger = structlog.typing.FilteringBoundLogger
Alert = dict[str, Any]

ALERTS_PATH = "/api/v2/alerts"
PREEMPTION_IMMINENT = "SpotguardPreemptionImminent"
DEADLINE_MISSED = "SpotguardDeadlineMissed"
#: The severities of the rule alerts of the same names (dashboards/alerts/spotguard.rules.yml);
#: a different value would be a different label set, hence a second alert, not a merged one.
SEVERITY = {PREEMPTION_IMMINENT: "info", DEADLINE_MISSED: "page"}
#: 408/429 and 5xx are worth another try; any other 4xx (a malformed alert, a wrong path) is not.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Alertmanager answers 200 with an empty body; read at most this much of any answer (for logs).
MAX_ANSWER_BYTES = 4096


class Outcome(enum.StrEnum):
    """The ``outcome`` label of ``spotguard_actions_total{action="alert"}``."""

    SUCCESS = "success"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    attempts: int = 3
    #: each request, connect included
    request_timeout: float = 2.0
    #: full jitter over a ceiling doubling from ``backoff`` up to ``max_backoff`` between tries
    backoff: float = 0.25
    max_backoff: float = 1.0
    #: the whole call, retries included: the hard bound the caller can rely on
    budget: float = 5.0
    #: an imminent alert outlives the deadline by this much (the node is gone by then; the rule
    #: alert, kept alive by its 2m window, and any drain alert take over)
    imminent_linger: timedelta = timedelta(minutes=5)
    #: how long a missed deadline stays raised without anyone to resolve it
    missed_ttl: timedelta = timedelta(minutes=15)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.request_timeout <= 0 or self.budget <= 0:
            raise ValueError("attempts >= 1, request_timeout > 0 and budget > 0 are required")


def make_session() -> aiohttp.ClientSession:
    """A session for Alertmanager: proxies from the environment (see module doc), no cookies."""
    return aiohttp.ClientSession(
        trust_env=True,
        cookie_jar=aiohttp.DummyCookieJar(),
        connector=aiohttp.TCPConnector(limit=4),
        raise_for_status=False,
    )


def _alert(
    *,
    alertname: str,
    notice: Notice,
    cluster: str,
    nodepool: str,
    summary: str,
    description: str,
    runbook_base_url: str,
    starts_at: datetime,
    ends_at: datetime,
    generator_url: str | None,
) -> Alert:
    alert: Alert = {
        # Exactly these five: one more (event_id, kind) would make a label set no rule alert has,
        # and Alertmanager would show two alerts for one node instead of merging them.
        "labels": {
            "alertname": alertname,
            "severity": SEVERITY[alertname],
            "cluster": cluster,
            "nodepool": nodepool,
            "node": notice.node,
        },
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{runbook_base_url}{alertname}.md",
        },
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(ends_at),
    }
    if generator_url:
        alert["generatorURL"] = generator_url
    return alert


def preemption_imminent_alert(
    notice: Notice,
    *,
    cluster: str,
    nodepool: str,
    now: datetime,
    options: DeliveryOptions,
    runbook_base_url: str,
    generator_url: str | None = None,
) -> Alert:
    # A notice first seen already Started has its deadline in the past: count from now.
    ends_at = max(notice.deadline, now) + options.imminent_linger
    return _alert(
        alertname=PREEMPTION_IMMINENT,
        notice=notice,
        cluster=cluster,
        nodepool=nodepool,
        # The rule's summary, word for word: a merged alert reads the same whoever posted last.
        summary=f"Spot node {notice.node} is being preempted",
        description=(
            f"Azure announced a {notice.kind.value.capitalize()} for node {notice.node} "
            f"(pool {nodepool}, cluster {cluster}); drain deadline {rfc3339(notice.deadline)}. "
            "spotguard cordons and drains it; act only if a drain alert follows. "
            f"Sent by the agent itself (event {notice.event_id})."
        ),
        runbook_base_url=runbook_base_url,
        starts_at=now,
        ends_at=ends_at,
        generator_url=generator_url,
    )


def deadline_missed_alert(
    notice: Notice,
    *,
    late_s: float,
    cluster: str,
    nodepool: str,
    now: datetime,
    options: DeliveryOptions,
    runbook_base_url: str,
    generator_url: str | None = None,
) -> Alert:
    return _alert(
        alertname=DEADLINE_MISSED,
        notice=notice,
        cluster=cluster,
        nodepool=nodepool,
        summary=f"Drain of {notice.node} missed its deadline",
        description=(
            f"Pods were still on node {notice.node} (pool {nodepool}, cluster {cluster}) "
            f"{late_s:.1f}s after the notice deadline {rfc3339(notice.deadline)}; they were "
            f"killed with the VM instead of moving. Sent by the agent itself "
            f"({notice.kind.value}, event {notice.event_id})."
        ),
        runbook_base_url=runbook_base_url,
        starts_at=now,
        ends_at=now + options.missed_ttl,
        generator_url=generator_url,
    )


@dataclass(frozen=True, slots=True)
class _Attempt:
    done: bool  # accepted, or failed for good
    ok: bool
    detail: str


class AlertmanagerSink:
    """Posts the agent's direct alerts to one Alertmanager; see the module doc for the rules.

    ``session``: pass one to share it (the caller closes it), or let the sink create its own on
    first use (closed by ``close()`` / ``async with``).
    """

    def __init__(
        self,
        *,
        url: str,
        runbook_base_url: str,
        clock: Clock,
        log: Logger,
        dry_run: bool = False,
        session: aiohttp.ClientSession | None = None,
        options: DeliveryOptions | None = None,
        generator_url: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        base = URL(url)
        # Keep a path prefix (Alertmanager behind --web.route-prefix or a reverse proxy).
        self._url = str(base.with_path(base.path.rstrip("/") + ALERTS_PATH))
        # Credentials in the URL (basic auth) are used by aiohttp but never logged.
        self._safe_url = str(URL(self._url).with_user(None))
        self._runbook_base_url = runbook_base_url
        self._clock = clock
        self._log = log.bind(sink="alertmanager")
        self._dry_run = dry_run
        self._session = session
        self._owns_session = session is None
        self._options = options or DeliveryOptions()
        self._generator_url = generator_url
        self._rng = rng or random.Random()

    async def __aenter__(self) -> AlertmanagerSink:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def preemption_imminent(self, notice: Notice, *, cluster: str, nodepool: str) -> Outcome:
        """Raise ``SpotguardPreemptionImminent`` for ``notice.node``; ends deadline + linger.

        Meant for Preempt notices, like the rule of the same name (``kind="preempt"``).
        """
        alert = preemption_imminent_alert(
            notice,
            cluster=cluster,
            nodepool=nodepool,
            now=self._clock.now(),
            options=self._options,
            runbook_base_url=self._runbook_base_url,
            generator_url=self._generator_url,
        )
        return await self.post([alert])

    async def deadline_missed(
        self, notice: Notice, *, late_s: float, cluster: str, nodepool: str
    ) -> Outcome:
        """Raise ``SpotguardDeadlineMissed`` (it pages) for ``notice.node``; ends after
        ``missed_ttl``."""
        alert = deadline_missed_alert(
            notice,
            late_s=late_s,
            cluster=cluster,
            nodepool=nodepool,
            now=self._clock.now(),
            options=self._options,
            runbook_base_url=self._runbook_base_url,
            generator_url=self._generator_url,
        )
        return await self.post([alert])

    # No resolve(): posting endsAt=now would also resolve the rule alert of the same labels,
    # which Prometheus re-fires at its next resend while its window still holds the notice —
    # a resolved/firing flap in the receiver. Both alerts expire on their own instead.

    async def post(self, alerts: list[Alert]) -> Outcome:
        """POST ``alerts`` with bounded retries; never raises (except on cancellation)."""
        names = [a.get("labels", {}).get("alertname") for a in alerts]
        log = self._log.bind(alertnames=names)
        if self._dry_run:
            log.info(
                "dry_run_write", action="alert", verb="post", url=self._safe_url, alerts=alerts
            )
            return Outcome.SKIPPED
        try:
            return await self._post(json.dumps(alerts).encode(), log)
        except Exception as exc:  # the contract: an alert problem never reaches the drain
            log.error("alert_not_sent", error=repr(exc))
            return Outcome.ERROR

    async def _post(self, body: bytes, log: Logger) -> Outcome:
        options = self._options
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + options.budget
        detail = "no attempt made"
        attempt = 0
        try:
            # The hard bound: whatever a request or a sleep does, the call ends by give_up_at.
            async with asyncio.timeout_at(give_up_at):
                for attempt in range(1, options.attempts + 1):
                    if attempt > 1:
                        delay = self._backoff(attempt)
                        if loop.time() + delay >= give_up_at:
                            break  # no time left for another request worth making
                        await asyncio.sleep(delay)
                    timeout = max(0.001, min(options.request_timeout, give_up_at - loop.time()))
                    result = await self._attempt(body, timeout)
                    if result.ok:
                        log.debug("alert_posted", attempts=attempt)
                        return Outcome.SUCCESS
                    detail = result.detail
                    log.warning("alert_attempt_failed", attempt=attempt, error=detail)
                    if result.done:
                        break
        except TimeoutError:
            detail = f"gave up after {options.budget:g}s ({detail})"
        log.error("alert_not_sent", url=self._safe_url, attempts=attempt, error=detail)
        return Outcome.ERROR

    async def _attempt(self, body: bytes, timeout: float) -> _Attempt:
        if self._session is None:
            self._session = make_session()
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                if 200 <= response.status < 300:
                    return _Attempt(done=True, ok=True, detail="")
                answer = await response.content.read(MAX_ANSWER_BYTES)
                detail = f"HTTP {response.status}: {answer.decode('utf-8', 'replace').strip()}"
                return _Attempt(done=response.status not in RETRY_STATUSES, ok=False, detail=detail)
        except TimeoutError:
            return _Attempt(done=False, ok=False, detail=f"no answer within {timeout:.2g}s")
        except aiohttp.ClientError as exc:
            return _Attempt(done=False, ok=False, detail=f"{type(exc).__name__}: {exc}")

    def _backoff(self, attempt: int) -> float:
        """Full jitter before try ``attempt`` (2, 3, ...): agents of one pool, preempted
        together, do not retry in step against the same Alertmanager."""
        ceiling = min(self._options.max_backoff, self._options.backoff * 2 ** (attempt - 2))
        return self._rng.uniform(0, ceiling)
