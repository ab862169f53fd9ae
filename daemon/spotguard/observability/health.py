"""What ``/healthz`` and ``/readyz`` report (DESIGN.md, Contracts → Health).

Liveness is only "the agent's tasks run": an IMDS or API server outage is not fixed by a restart.
Readiness is identity resolved, the API server answering and IMDS not blind. ``Health`` is made
early by the composition root (the server answers probes while identity is still being
resolved) and filled in as the pieces exist; until then its defaults fail readiness honestly.
All times are loop time (monotonic).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: Default bound on one API server check. Below the kubelet's default probe timeout (1 s), so
#: a hanging API server makes the probe fail with our reason instead of a probe timeout.
API_CHECK_TIMEOUT = 0.8
#: An API check result is reused this long, so several callers (kubelet, a person with curl)
#: cost at most one request per interval.
API_CHECK_CACHE = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str = "ok"

    def line(self) -> str:
        return f"{self.name}: {self.detail}"


def _running() -> bool:
    return True  # before the tasks exist, the one running is identity resolution


def _never_answered() -> float | None:
    return None


class Health:
    """Inputs of the probes; the composition root sets the attributes as the pieces exist.

    - ``identity_resolved``: set True once the VM name and the node are known and agree.
    - ``tasks_running``: whether every long-running task is still running.
    - ``imds_last_success``: loop time of the last valid Scheduled Events document, or None
      (``ImdsPoller.last_success``).
    - ``api_check``: True when the API server answers; see ``api_version_check``. It is called
      when a probe asks, bounded by ``api_timeout`` and cached for ``api_cache_for``: one cheap
      request per probe period, and unlike "time of our last API call" it stays honest on an
      idle node that has no reason to call the API server.

    Blindness: IMDS silent for longer than ``blind_after``. Before the first answer, silence
    counts from when this object was made (the agent started), so a fresh agent is not called
    blind while IMDS enables Scheduled Events; it is not ready either until IMDS has answered.
    ``spotguard_imds_blind`` reads ``imds_blind`` here, so the gauge and ``/readyz`` agree.
    """

    def __init__(
        self,
        *,
        blind_after: float,
        api_check: Callable[[], Awaitable[bool]],
        now: Callable[[], float] | None = None,
        api_timeout: float = API_CHECK_TIMEOUT,
        api_cache_for: float = API_CHECK_CACHE,
        uses_imds: bool = True,
    ) -> None:
        self.blind_after = blind_after
        #: queue mode runs off the node and never reads IMDS: no IMDS check for it
        self.uses_imds = uses_imds
        self.api_check = api_check
        self.identity_resolved = False
        self.tasks_running: Callable[[], bool] = _running
        self.imds_last_success: Callable[[], float | None] = _never_answered
        # The loop's clock, the one ImdsPoller.last_success is read from.
        self._now = now or asyncio.get_running_loop().time
        self._since = self._now()
        self._api_timeout = api_timeout
        self._api_cache_for = api_cache_for
        self._api_lock = asyncio.Lock()
        self._api_cached: tuple[float, Check] | None = None

    # --- IMDS -----------------------------------------------------------------------------

    def imds_silent_for(self) -> float:
        last = self.imds_last_success()
        return max(0.0, self._now() - (self._since if last is None else last))

    def imds_blind(self) -> bool:
        return self.imds_silent_for() > self.blind_after

    # --- probes ---------------------------------------------------------------------------

    def live(self) -> Check:
        if self.tasks_running():
            return Check("tasks", ok=True)
        return Check("tasks", ok=False, detail="not running")

    async def ready(self) -> list[Check]:
        """Every readiness check, passing or not, so a failure body shows the whole picture."""
        checks = [self._identity(), await self._api()]
        return [*checks, self._imds()] if self.uses_imds else checks

    def _identity(self) -> Check:
        if self.identity_resolved:
            return Check("identity", ok=True)
        return Check("identity", ok=False, detail="not resolved yet (waiting for IMDS / the node)")

    def _imds(self) -> Check:
        silent = self.imds_silent_for()
        if self.imds_last_success() is None:
            return Check("imds", ok=False, detail=f"no answer yet ({silent:.0f}s)")
        if silent > self.blind_after:
            detail = f"blind for {silent:.0f}s (threshold {self.blind_after:g}s)"
            return Check("imds", ok=False, detail=detail)
        return Check("imds", ok=True)

    async def _api(self) -> Check:
        # The lock makes concurrent probes share one request instead of stacking them.
        async with self._api_lock:
            cached = self._api_cached
            if cached is not None and self._now() - cached[0] < self._api_cache_for:
                return cached[1]
            check = await self._probe_api()
            self._api_cached = (self._now(), check)
            return check

    async def _probe_api(self) -> Check:
        try:
            async with asyncio.timeout(self._api_timeout):
                answered = await self.api_check()
        except TimeoutError:
            return Check("api", ok=False, detail=f"no answer within {self._api_timeout:g}s")
        except Exception as exc:  # any failure means "not answering"; the body says which
            return Check("api", ok=False, detail=str(exc) or type(exc).__name__)
        if not answered:
            return Check("api", ok=False, detail="not answering")
        return Check("api", ok=True)


class _Requester(Protocol):
    """What ``api_version_check`` needs of ``spotguard.kube.client.KubeClient``."""

    async def request(self, method: str, path: str) -> Any: ...


def api_version_check(client: _Requester) -> Callable[[], Awaitable[bool]]:
    """``GET /version``: answered from memory by the API server, readable by every identity
    (``system:public-info-viewer``), so it tests reachability and credentials, nothing else.
    ``Health`` bounds it with its own ``api_timeout``; a failure's message becomes the reason."""

    async def check() -> bool:
        await client.request("GET", "/version")
        return True

    return check
