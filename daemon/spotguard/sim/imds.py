"""Azure IMDS simulator: Scheduled Events and instance metadata, served over real HTTP.

A stand-in for ``http://169.254.169.254`` that the demo, the tests and operators rehearsing
evictions use. It serves one port per VM of one scale set; all VMs share one event list, as
the VMs of a placement group do, so every VM sees events that list only other VMs (clients
filter by ``Resources``). Details and curl examples: ``docs/imds-simulator.md``.

What Azure does, and the simulator too (every ``/metadata`` request):

- 400 without ``Metadata: true``, with ``X-Forwarded-For``, with a repeated query parameter, or with
  a missing or unsupported ``api-version`` (Azure-like JSON error bodies);
- 429 above 5 requests/s per VM (sliding 1 s window over all of that VM's ``/metadata`` requests,
  throttled ones included);
- optionally 410 Gone for a while after a VM's first Scheduled Events request (Azure enables the
  feature on first use), and a slow first answer;
- ``GET /metadata/scheduledevents``: ``{"DocumentIncarnation": n, "Events": [...]}`` with the fields
  of the requested api-version; ``DocumentIncarnation`` changes when, and only when, the Events
  array changes;
- ``POST /metadata/scheduledevents`` with ``{"StartRequests": [{"EventId": ...}]}``: 200 and the
  event starts (also 200 for an event already started); 400 for a malformed body or an unknown id;
- lifecycle: Scheduled -> Started (at ``NotBefore`` or on acknowledgement; ``NotBefore`` becomes
  "") -> removed after the event's time Started; cancellation removes a Scheduled event; there is
  no "Completed";
- ``GET /metadata/instance`` (and ``/metadata/instance/<key>/...``, ``format=text`` for leaves)
  with AKS-like spot VM values, all primitives strings; ``GET /metadata/versions`` (unversioned).

``NotBefore`` is always true wall-clock time (from the injected clock), rounded up to a whole
second. The speed-up factor only divides the simulator's own durations: the delay before a
scenario's event appears, the time an event stays Started, the time until a scripted cancellation.

The Python API: ``async with ImdsSimulator(vms=[...]) as sim`` then ``sim.url()``, ``inject``,
``start_event``, ``cancel``, ``play``, ``add_fault``, ``requests``, ``wait_for_change``; the same
operations over HTTP under ``/control`` on every VM port.

The simulator's modules (all ``spotguard.sim.``; this one re-exports their public names):

- ``imds``: ``ImdsSimulator`` (the event list, its timers, the ``/metadata`` handlers) and
  ``main``, the ``spotguard simulate-imds`` command;
- ``imds_model``: events, acknowledgements, request records, Scheduled Events api-version facts;
- ``imds_vm``: the simulated VMs (``SimVm``), named by ``spotguard.sources.identity``;
- ``imds_instance``: instance metadata documents by api-version;
- ``imds_faults``: injected faults, which requests they apply to, what they answer;
- ``imds_scenarios``: the scripted events;
- ``imds_control``: the control API, the Python API as JSON over HTTP;
- ``imds_http``: JSON in and out of the HTTP handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from spotguard.clock import Clock, SystemClock
from spotguard.model import Kind
from spotguard.observability.logging import configure_logging, get_logger
from spotguard.sim.imds_control import ControlApi
from spotguard.sim.imds_faults import Fault, FaultKind, FaultQueue, fault_response
from spotguard.sim.imds_http import STATUS_MESSAGES, error_response, json_response
from spotguard.sim.imds_instance import INSTANCE_API_VERSIONS, instance_document, select
from spotguard.sim.imds_model import (
    EVENTS_API_VERSIONS,
    LATEST_EVENTS_API_VERSION,
    SCHEDULED,
    STARTED,
    TYPE_DEFAULTS,
    Acknowledgement,
    RequestRecord,
    SimEvent,
    ceil_second,
    event_kind,
    event_type_name,
    new_event_id,
)
from spotguard.sim.imds_scenarios import SCENARIOS, Scenario, scenario_named
from spotguard.sim.imds_vm import (
    DEFAULT_LOCATION,
    DEFAULT_RESOURCE_GROUP,
    DEFAULT_SCALE_SET,
    DEFAULT_SUBSCRIPTION,
    SimVm,
    default_vm_name,
)

__all__ = [
    "DEFAULT_LOCATION",
    "DEFAULT_RESOURCE_GROUP",
    "DEFAULT_SCALE_SET",
    "DEFAULT_SUBSCRIPTION",
    "EVENTS_API_VERSIONS",
    "INSTANCE_API_VERSIONS",
    "LATEST_EVENTS_API_VERSION",
    "RATE_LIMIT_PER_SECOND",
    "SCENARIOS",
    "SCHEDULED",
    "STARTED",
    "Acknowledgement",
    "Fault",
    "FaultKind",
    "ImdsSimulator",
    "RequestRecord",
    "Scenario",
    "SimEvent",
    "SimVm",
    "ceil_second",
    "default_vm_name",
    "event_type_name",
    "instance_document",
    "main",
    "scenario_named",
]

RATE_LIMIT_PER_SECOND: Final = 5

_ERR_HEADER: Final = "Bad request. Required metadata header not specified"
_ERR_FORWARDED: Final = "Bad request. Request must not contain the X-Forwarded-For header"
_ERR_VERSION: Final = (
    "Bad request. api-version is invalid or was not specified in the request. "
    "For more information refer to aka.ms/azureimds"
)
# Request headers kept in the request log (and every Proxy-* header).
_LOGGED_HEADERS: Final = ("Metadata", "X-Forwarded-For", "Forwarded", "Via", "User-Agent")


class ImdsSimulator:
    """Azure IMDS for several VMs of one scale set: one port per VM, one shared event list.

    Use ``async with ImdsSimulator(vms=[...]) as sim:``; ``sim.url(vm)`` is a VM's base URL
    (``http://127.0.0.1:PORT``; its IMDS is under ``/metadata``, the control API under
    ``/control``). Wall time comes only from ``clock``; timers run on the event loop's clock.
    """

    def __init__(
        self,
        vms: Sequence[str | SimVm] = (default_vm_name(0),),
        *,
        ports: Sequence[int] | None = None,
        host: str = "127.0.0.1",
        clock: Clock | None = None,
        speedup: float = 1.0,
        appear_after: float = 1.0,
        enablement: float = 0.0,
        first_call_delay: float = 0.0,
        rate_limit: int = RATE_LIMIT_PER_SECOND,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        if not vms:
            raise ValueError("at least one VM is needed")
        self._vms = tuple(v if isinstance(v, SimVm) else SimVm.from_name(v) for v in vms)
        if len({v.name for v in self._vms}) != len(self._vms):
            raise ValueError("VM names must be unique")
        self._ports = tuple(ports) if ports is not None else (0,) * len(self._vms)
        if len(self._ports) != len(self._vms):
            raise ValueError("one port per VM")
        if speedup <= 0:
            raise ValueError("speedup must be positive")
        self._host = host
        self._clock: Clock = clock or SystemClock()
        self._speedup = speedup
        self._appear_after = appear_after
        self._enablement = enablement
        self._first_call_delay = first_call_delay
        self._rate_limit = rate_limit
        self._log = log or get_logger(component="imds-sim")

        self._events: dict[str, SimEvent] = {}
        self._incarnation = 1
        self._changed = asyncio.Event()
        self._acks: list[Acknowledgement] = []
        self._requests: list[RequestRecord] = []
        self._faults = FaultQueue()
        self._windows: dict[str, deque[float]] = {v.name: deque() for v in self._vms}
        self._first_events_request: dict[str, float] = {}
        self._event_timers: dict[str, asyncio.TimerHandle] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._runners: list[web.AppRunner] = []
        self._urls: dict[str, str] = {}
        self._closing = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle --

    async def __aenter__(self) -> ImdsSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen on every VM's port."""
        if self._loop is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.get_running_loop()
        try:
            for vm, port in zip(self._vms, self._ports, strict=True):
                runner = web.AppRunner(
                    self._app(vm), access_log=None, handler_cancellation=True, shutdown_timeout=1
                )
                await runner.setup()
                self._runners.append(runner)
                sock = socket.create_server((self._host, port))
                await web.SockSite(runner, sock).start()
                bound_host, bound_port = sock.getsockname()[:2]
                shown = f"[{bound_host}]" if ":" in bound_host else bound_host
                self._urls[vm.name] = f"http://{shown}:{bound_port}"
        except BaseException:
            await self.stop()
            raise
        self._log.info("imds_sim_started", vms=self._urls, speedup=self._speedup)

    async def stop(self) -> None:
        """Cancel every timer, end pending delays, close the ports. Safe to call twice."""
        self._closing.set()
        for handle in [*self._timers]:
            handle.cancel()
        self._timers.clear()
        self._event_timers.clear()
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    def _app(self, vm: SimVm) -> web.Application:
        async def metadata(request: web.Request) -> web.StreamResponse:
            return await self._metadata(request, vm)

        app = web.Application()
        app.router.add_route("*", "/metadata{tail:.*}", metadata)
        ControlApi(self, vm).add_routes(app)
        return app

    # -- read-only views --

    @property
    def vms(self) -> tuple[SimVm, ...]:
        return self._vms

    @property
    def urls(self) -> Mapping[str, str]:
        """VM name -> base URL, once started."""
        return MappingProxyType(self._urls)

    @property
    def speedup(self) -> float:
        return self._speedup

    def url(self, vm: str | None = None) -> str:
        """Base URL of ``vm`` (default: the first VM)."""
        return self._urls[self.vm(vm).name]

    def vm(self, name: str | None = None) -> SimVm:
        """The VM called ``name`` (default: the first); ValueError if this simulator has none."""
        if name is None:
            return self._vms[0]
        for vm in self._vms:
            if vm.name == name:
                return vm
        raise ValueError(f"unknown VM {name!r}; served: {', '.join(v.name for v in self._vms)}")

    @property
    def incarnation(self) -> int:
        return self._incarnation

    def events(self) -> tuple[SimEvent, ...]:
        return tuple(self._events.values())

    def event(self, event_id: str) -> SimEvent | None:
        return self._events.get(self._key(event_id) or "")

    def document(self, api_version: str = LATEST_EVENTS_API_VERSION) -> dict[str, Any]:
        """The Scheduled Events document every VM sees at ``api_version``."""
        shown = (event.imds(api_version) for event in self._events.values())
        return {
            "DocumentIncarnation": self._incarnation,
            "Events": [e for e in shown if e is not None],
        }

    def acknowledgements(self) -> tuple[Acknowledgement, ...]:
        return tuple(self._acks)

    def requests(self, vm: str | None = None) -> tuple[RequestRecord, ...]:
        """The request log in arrival order, optionally of one VM."""
        records = (r for r in self._requests if vm is None or r.vm == vm)
        return tuple(sorted(records, key=lambda r: r.loop_time))

    def clear_requests(self) -> int:
        """Empty the request log; return how many records it had."""
        count = len(self._requests)
        self._requests.clear()
        return count

    def faults(self) -> tuple[Fault, ...]:
        return self._faults.pending(self._now())

    def state(self) -> dict[str, Any]:
        return {
            "incarnation": self._incarnation,
            "document": self.document(),
            "events": [e.to_json() for e in self._events.values()],
            "vms": [{**v.to_json(), "url": self._urls.get(v.name)} for v in self._vms],
            "acknowledgements": [a.to_json() for a in self._acks],
            "faults": [f.to_json() for f in self.faults()],
            "speedup": self._speedup,
        }

    async def wait_for_change(self, incarnation: int, timeout: float) -> int:
        """Wait until the incarnation differs from ``incarnation``; return the new one."""
        async with asyncio.timeout(timeout):
            while self._incarnation == incarnation:
                await self._changed.wait()
        return self._incarnation

    # -- state changes --

    def inject(
        self,
        event_type: Kind | str,
        *,
        resources: Sequence[str] | None = None,
        not_before_in: float | None = None,
        status: str = SCHEDULED,
        duration: int | None = None,
        description: str | None = None,
        source: str | None = None,
        event_id: str | None = None,
        started_for: float | None = None,
    ) -> SimEvent:
        """Add an event now. ``NotBefore`` = clock now + ``not_before_in`` (default: the type's
        minimum notice), rounded up to a whole second; a Started event has none."""
        kind = event_kind(event_type)
        defaults = TYPE_DEFAULTS[kind]
        status = status.capitalize()
        if status not in (SCHEDULED, STARTED):
            raise ValueError("status must be Scheduled or Started")
        if isinstance(resources, str):
            raise TypeError("resources must be a list of VM names, not one string")
        names = tuple(resources) if resources is not None else (self._vms[0].name,)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError("resources must be a non-empty list of VM names")
        notice = defaults.notice if not_before_in is None else not_before_in
        if notice < 0:
            raise ValueError("not_before_in must not be negative")
        event_id = event_id or new_event_id()
        if self._key(event_id) is not None:
            raise ValueError(f"event {event_id} exists")
        not_before = ceil_second(self._clock.now() + timedelta(seconds=notice))
        event = SimEvent(
            event_id=event_id,
            event_type=event_type_name(kind),
            resources=names,
            status=status,
            not_before=not_before if status == SCHEDULED else None,
            description=defaults.description if description is None else description,
            event_source=source or defaults.source,
            duration_s=defaults.duration if duration is None else int(duration),
            started_for=defaults.started_for if started_for is None else float(started_for),
        )
        self._events[event_id] = event
        self._bump("imds_sim_event_added", event)
        if status == SCHEDULED:
            delay = (not_before - self._clock.now()).total_seconds()
            self._event_timers[event_id] = self._later(delay, lambda: self._start(event_id))
        else:
            self._schedule_removal(event)
        return event

    def start_event(self, event_id: str) -> SimEvent:
        """Move a Scheduled event to Started now (as Azure does once it is approved)."""
        return self._start(self._known_key(event_id))

    def cancel(self, event_id: str) -> SimEvent:
        """Remove an event: a cancellation while Scheduled, an early completion once Started."""
        return self._remove(self._known_key(event_id), "imds_sim_event_cancelled")

    def play(
        self,
        name: str,
        *,
        vm: str | None = None,
        notice: float | None = None,
        appear_after: float | None = None,
    ) -> str:
        """Run a scenario against ``vm`` (default the first); return its future event's id.

        ``notice`` overrides the scenario's notice (real seconds until NotBefore) — an explicit
        choice, unlike the speed-up, which never shortens a notice.
        """
        scenario = scenario_named(name)
        target = self.vm(vm)
        if notice is not None and notice < 0:
            raise ValueError("notice must not be negative")
        resources = (self._sibling(target),) if scenario.other_vm else (target.name,)
        event_id = new_event_id()

        def appear() -> None:
            self.inject(
                scenario.kind,
                resources=resources,
                not_before_in=scenario.notice_seconds if notice is None else notice,
                duration=scenario.duration,
                started_for=scenario.started_for,
                event_id=event_id,
            )
            if scenario.cancel_after is not None:
                self._later(
                    self._scaled(scenario.cancel_after), lambda: self._cancel_if_scheduled(event_id)
                )

        delay = self._appear_after if appear_after is None else appear_after
        self._later(self._scaled(delay), appear)
        self._log.info("imds_sim_scenario", scenario=name, vm=target.name, event_id=event_id)
        return event_id

    def add_fault(self, fault: Fault) -> Fault:
        if fault.vm is not None:
            self.vm(fault.vm)  # unknown VM -> ValueError
        self._faults.add(fault, self._now())
        self._log.info("imds_sim_fault_added", **fault.to_json())
        return fault

    def clear_faults(self) -> int:
        """Remove every pending fault; return how many were still pending."""
        return self._faults.clear(self._now())

    # -- internals: state --

    def _sibling(self, vm: SimVm) -> str:
        """A VM of ``vm``'s scale set that this simulator does not serve (no agent acts on it)."""
        if vm.scale_set:
            numbers = [int(v.instance_id) for v in self._vms if v.scale_set == vm.scale_set]
            return vm.instance_name(max(numbers) + 1)
        served = {v.name for v in self._vms}
        index = 1
        while f"{vm.name}-{index}" in served:
            index += 1
        return f"{vm.name}-{index}"

    def _key(self, event_id: str) -> str | None:
        """The stored id for ``event_id``: GUIDs compare case-insensitively."""
        wanted = event_id.lower()
        return next((key for key in self._events if key.lower() == wanted), None)

    def _known_key(self, event_id: str) -> str:
        """``_key``, or KeyError for an event that does not exist."""
        key = self._key(event_id)
        if key is None:
            raise KeyError(event_id)
        return key

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the simulator is not started")
        return self._loop

    def _now(self) -> float:
        return self._running_loop().time()

    def _scaled(self, seconds: float) -> float:
        return seconds / self._speedup

    def _later(self, delay: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        def run() -> None:
            self._timers.discard(handle)
            callback()

        handle = self._running_loop().call_later(max(delay, 0.0), run)
        self._timers.add(handle)
        return handle

    def _bump(self, log_event: str, event: SimEvent) -> None:
        self._incarnation += 1
        # Wake every waiter, then give later waiters a fresh Event.
        self._changed.set()
        self._changed = asyncio.Event()
        self._log.info(
            log_event,
            event_id=event.event_id,
            event_type=event.event_type,
            status=event.status,
            resources=list(event.resources),
            not_before=event.not_before_text,
            incarnation=self._incarnation,
        )

    def _start(self, event_id: str) -> SimEvent:
        event = self._events[event_id]
        if event.status == STARTED:
            return event
        self._cancel_timer(event_id)
        event = replace(event, status=STARTED, not_before=None)
        self._events[event_id] = event
        self._bump("imds_sim_event_started", event)
        self._schedule_removal(event)
        return event

    def _schedule_removal(self, event: SimEvent) -> None:
        event_id = event.event_id
        self._event_timers[event_id] = self._later(
            self._scaled(event.started_for),
            lambda: self._remove(event_id, "imds_sim_event_completed"),
        )

    def _remove(self, event_id: str, log_event: str) -> SimEvent:
        self._cancel_timer(event_id)
        event = self._events.pop(event_id)
        self._bump(log_event, event)
        return event

    def _cancel_if_scheduled(self, event_id: str) -> None:
        event = self._events.get(event_id)
        if event is not None and event.status == SCHEDULED:
            self._remove(event_id, "imds_sim_event_cancelled")

    def _cancel_timer(self, event_id: str) -> None:
        handle = self._event_timers.pop(event_id, None)
        if handle is not None:
            handle.cancel()
            self._timers.discard(handle)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but end early when the simulator stops (so shutdown never waits on it)."""
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            pass

    # -- internals: /metadata --

    async def _metadata(self, request: web.Request, vm: SimVm) -> web.StreamResponse:
        arrived, wall = self._now(), self._clock.now()
        response: web.StreamResponse | None = None
        # The kind of the fault that shapes the answer, set once taken: a DELAY fault's request
        # is logged with it even when the client leaves (and this handler is cancelled) first.
        fault: list[str] = []
        try:
            response = await self._answer(request, vm, arrived, fault)
            if response is None:  # a DROP fault
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=500)  # never reaches the client
            return response
        finally:
            self._record(request, vm, arrived, wall, response, fault[0] if fault else None)

    def _record(
        self,
        request: web.Request,
        vm: SimVm,
        arrived: float,
        wall: datetime,
        response: web.StreamResponse | None,
        fault: str | None,
    ) -> None:
        status = None if response is None else response.status
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.title() in _LOGGED_HEADERS or name.lower().startswith("proxy-")
        }
        self._log.debug(
            "imds_sim_request",
            vm=vm.name,
            method=request.method,
            path=request.path,
            status=status,
            fault=fault,
        )
        self._requests.append(
            RequestRecord(
                wall=wall,
                loop_time=arrived,
                vm=vm.name,
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers=MappingProxyType(headers),
                status=status,
                fault=fault,
            )
        )

    async def _answer(
        self, request: web.Request, vm: SimVm, now: float, fault: list[str]
    ) -> web.StreamResponse | None:
        """The answer to a /metadata request, or None to drop the connection."""
        window = self._windows[vm.name]
        while window and window[0] <= now - 1.0:
            window.popleft()
        window.append(now)
        if len(window) > self._rate_limit:
            return error_response(429, STATUS_MESSAGES[429])
        if request.headers.get("Metadata", "").lower() != "true":
            return error_response(400, _ERR_HEADER)
        if "X-Forwarded-For" in request.headers:
            return error_response(400, _ERR_FORWARDED)
        if len(set(request.query.keys())) != len(request.query):
            return error_response(400, "Bad request. Duplicate query parameters are not allowed")
        path = request.path.rstrip("/")
        if path == "/metadata/versions":
            if request.method != "GET":
                return _method_not_allowed()
            return json_response(200, {"apiVersions": list(INSTANCE_API_VERSIONS)})
        if path == "/metadata/scheduledevents":
            return await self._scheduled_events(request, vm, fault)
        if path == "/metadata/instance" or path.startswith("/metadata/instance/"):
            return self._instance(request, vm, path)
        return error_response(404, "Not found")

    async def _scheduled_events(
        self, request: web.Request, vm: SimVm, fault: list[str]
    ) -> web.StreamResponse | None:
        version = request.query.get("api-version", "")
        if version not in EVENTS_API_VERSIONS:
            return _unsupported_version(EVENTS_API_VERSIONS)
        if request.method not in ("GET", "POST"):
            return _method_not_allowed()
        is_first = vm.name not in self._first_events_request
        first = self._first_events_request.setdefault(vm.name, self._now())
        if is_first and self._first_call_delay > 0:
            await self._sleep(self._first_call_delay)  # enabling the feature takes a while
        if self._now() - first < self._enablement:
            return error_response(410, STATUS_MESSAGES[410])
        injected = self._faults.take(vm.name, request.method, self._now())
        if injected is not None:
            fault.append(injected.kind.value)
            if injected.kind is FaultKind.DROP:
                return None
            if injected.kind is not FaultKind.DELAY:
                return fault_response(injected, self.document(version), version, self._clock.now())
            await self._sleep(injected.delay)
        if request.method == "POST":
            return await self._acknowledge(request, vm)
        return json_response(200, self.document(version))

    async def _acknowledge(self, request: web.Request, vm: SimVm) -> web.Response:
        ids = _start_request_ids(await request.read())
        if ids is None:
            return error_response(400, "Bad request. The request body is malformed")
        keys = [self._key(i) for i in ids]
        unknown = [i for i, k in zip(ids, keys, strict=True) if k is None]
        if unknown:
            # Azure promises 200 only for valid ids; nothing is approved when one is unknown.
            return error_response(400, f"Bad request. Unknown EventId: {', '.join(unknown)}")
        wall, now = self._clock.now(), self._now()
        for key in keys:
            assert key is not None
            scheduled = self._events[key].status == SCHEDULED
            self._acks.append(Acknowledgement(key, vm.name, wall, now, started=scheduled))
            self._log.info("imds_sim_acknowledged", event_id=key, vm=vm.name)
            if scheduled:
                self._start(key)
        return web.Response(status=200)

    def _instance(self, request: web.Request, vm: SimVm, path: str) -> web.Response:
        version = request.query.get("api-version", "")
        if version not in INSTANCE_API_VERSIONS:
            return _unsupported_version(INSTANCE_API_VERSIONS)
        if request.method != "GET":
            return _method_not_allowed()
        fmt = request.query.get("format", "json")
        if fmt not in ("json", "text"):
            return error_response(400, "Bad request. format must be json or text")
        route = path.removeprefix("/metadata/instance")
        try:
            node = select(instance_document(vm, version), route)
        except LookupError:
            return error_response(404, "Not found")
        if isinstance(node, str):
            if fmt != "text":
                return error_response(400, "Bad request. Leaf values need format=text")
            return web.Response(text=node, content_type="text/plain")
        if fmt == "text":
            # Azure's text form of objects is not documented; refuse rather than invent one.
            return error_response(
                400, "Bad request. format=text is only for leaf values (simulator)"
            )
        return json_response(200, node)


def _unsupported_version(supported: Sequence[str]) -> web.Response:
    newest = list(reversed(supported[-3:]))
    return error_response(400, _ERR_VERSION, **{"newest-versions": newest})


def _method_not_allowed() -> web.Response:
    return error_response(405, "Method not allowed")


def _start_request_ids(body: bytes) -> list[str] | None:
    """The EventIds of a ``{"StartRequests": [{"EventId": ...}]}`` body; None if malformed."""
    try:
        requested = json.loads(body.decode("utf-8"))["StartRequests"]
        ids = [item["EventId"] for item in requested]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(requested, list) or not all(isinstance(i, str) for i in ids):
        return None
    return ids


# --- command line ----------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    """``spotguard simulate-imds``: serve until SIGTERM/SIGINT; one JSON line on stdout."""
    if args.list_scenarios:
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:<14} {scenario.summary}")
        return 0
    problem = _check_args(args)
    if problem:
        print(f"spotguard simulate-imds: {problem}", file=sys.stderr)
        return 2
    configure_logging(fmt=args.log_format, level=args.log_level)
    names = list(args.vm or [])
    names += [default_vm_name(i) for i in range(len(names), len(args.port))]
    try:
        simulator = ImdsSimulator(
            names,
            ports=args.port,
            host=args.host,
            clock=SystemClock(),
            speedup=args.speedup,
            enablement=args.enablement,
        )
        return asyncio.run(_serve(simulator, args.scenario, args.notice))
    except (OSError, ValueError) as exc:
        print(f"spotguard simulate-imds: {exc}", file=sys.stderr)
        return 1


def _check_args(args: argparse.Namespace) -> str | None:
    if not args.port:
        return "at least one --port is needed"
    if args.vm and len(args.vm) > len(args.port):
        return "more --vm than --port: give one --port per VM"
    if args.scenario:
        try:
            scenario_named(args.scenario)
        except ValueError as exc:
            return str(exc)
    if args.speedup <= 0:
        return "--speedup must be positive"
    if args.enablement < 0 or (args.notice is not None and args.notice < 0):
        return "--enablement and --notice must not be negative"
    return None


async def _serve(simulator: ImdsSimulator, scenario: str | None, notice: float | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with simulator:
        event_id = simulator.play(scenario, notice=notice) if scenario else None
        line = {
            "event": "listening",
            "vms": [{"name": name, "url": url} for name, url in simulator.urls.items()],
            "scenario": scenario,
            "event_id": event_id,
            "speedup": simulator.speedup,
        }
        print(json.dumps(line), flush=True)
        await stop.wait()
    get_logger(component="imds-sim").info("imds_sim_stopped")
    return 0
