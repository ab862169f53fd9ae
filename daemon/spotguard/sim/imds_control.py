"""The control API: ``ImdsSimulator``'s Python API as JSON over HTTP, on every VM's port.

Not rate limited, not in the request log, no ``Metadata`` header needed; errors are
``{"error": ...}`` with 400 (bad input) or 404 (unknown event). "This port's VM" is the VM whose
port received the request.

- ``GET /control/state``: incarnation, the current document, events, vms, acknowledgements,
  faults, speedup;
- ``GET /control/events``; ``POST /control/events`` ``{"type", "resources", "not_before_in",
  "status", "duration", "description", "source", "event_id", "started_for"}`` (all optional but
  ``type``; ``resources`` defaults to this port's VM) -> 201 and the event;
- ``POST /control/events/{id}/start`` -> the event; ``DELETE /control/events/{id}`` -> the removed
  event (a cancellation while Scheduled);
- ``GET /control/faults``; ``POST /control/faults`` ``{"kind", "status", "count", "seconds",
  "delay", "body", "body_base64", "size", "vm", "method"}`` -> 201; ``DELETE /control/faults``;
- ``GET /control/requests[?vm=NAME]``; ``DELETE /control/requests``;
- ``GET /control/scenarios``; ``POST /control/scenario`` ``{"name", "vm", "notice",
  "appear_after"}`` -> 202 and the id of the event that will appear.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from spotguard.sim.imds_faults import Fault
from spotguard.sim.imds_http import (
    error_response,
    json_response,
    optional,
    read_json_object,
    reject_unknown,
)
from spotguard.sim.imds_model import SCHEDULED, SimEvent
from spotguard.sim.imds_scenarios import SCENARIOS
from spotguard.sim.imds_vm import SimVm

if TYPE_CHECKING:
    from spotguard.sim.imds import ImdsSimulator

_INJECT_FIELDS: Final = (
    "type", "resources", "not_before_in", "status", "duration", "description", "source",
    "event_id", "started_for",
)  # fmt: skip


class ControlApi:
    """The control routes of one VM's port."""

    def __init__(self, sim: ImdsSimulator, vm: SimVm) -> None:
        self._sim = sim
        self._vm = vm  # this port's VM

    def add_routes(self, app: web.Application) -> None:
        route = app.router.add_route
        route("GET", "/control/state", self._state)
        route("GET", "/control/events", self._events)
        route("POST", "/control/events", self._inject)
        route("POST", "/control/events/{event_id}/start", self._start)
        route("DELETE", "/control/events/{event_id}", self._cancel)
        route("GET", "/control/faults", self._faults)
        route("POST", "/control/faults", self._add_fault)
        route("DELETE", "/control/faults", self._clear_faults)
        route("GET", "/control/requests", self._requests)
        route("DELETE", "/control/requests", self._clear_requests)
        route("GET", "/control/scenarios", self._scenarios)
        route("POST", "/control/scenario", self._play)

    async def _state(self, request: web.Request) -> web.Response:
        return json_response(200, self._sim.state())

    async def _events(self, request: web.Request) -> web.Response:
        return json_response(200, [e.to_json() for e in self._sim.events()])

    async def _inject(self, request: web.Request) -> web.Response:
        try:
            data = await read_json_object(request)
            resources = _checked_inject(data, default_vm=self._vm.name)
            event = self._sim.inject(
                str(data["type"]),
                resources=resources,
                not_before_in=optional(float, data.get("not_before_in")),
                status=str(data.get("status", SCHEDULED)),
                duration=optional(int, data.get("duration")),
                description=optional(str, data.get("description")),
                source=optional(str, data.get("source")),
                event_id=optional(str, data.get("event_id")),
                started_for=optional(float, data.get("started_for")),
            )
        except (TypeError, ValueError) as exc:
            return error_response(400, str(exc))
        return json_response(201, event.to_json())

    async def _start(self, request: web.Request) -> web.Response:
        return _event_answer(self._sim.start_event, request)

    async def _cancel(self, request: web.Request) -> web.Response:
        return _event_answer(self._sim.cancel, request)

    async def _faults(self, request: web.Request) -> web.Response:
        return json_response(200, [f.to_json() for f in self._sim.faults()])

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            fault = self._sim.add_fault(Fault.from_json(await read_json_object(request)))
        except (TypeError, ValueError) as exc:
            return error_response(400, str(exc))
        return json_response(201, fault.to_json())

    async def _clear_faults(self, request: web.Request) -> web.Response:
        return json_response(200, {"cleared": self._sim.clear_faults()})

    async def _requests(self, request: web.Request) -> web.Response:
        records = self._sim.requests(request.query.get("vm"))
        return json_response(200, [r.to_json() for r in records])

    async def _clear_requests(self, request: web.Request) -> web.Response:
        return json_response(200, {"cleared": self._sim.clear_requests()})

    async def _scenarios(self, request: web.Request) -> web.Response:
        listed = [{"name": s.name, "summary": s.summary} for s in SCENARIOS.values()]
        return json_response(200, listed)

    async def _play(self, request: web.Request) -> web.Response:
        try:
            data = await read_json_object(request)
            event_id = self._sim.play(
                str(data.get("name", "")),
                vm=optional(str, data.get("vm")) or self._vm.name,
                notice=optional(float, data.get("notice")),
                appear_after=optional(float, data.get("appear_after")),
            )
        except (TypeError, ValueError) as exc:
            return error_response(400, str(exc))
        return json_response(202, {"scenario": data.get("name"), "event_id": event_id})


def _checked_inject(data: dict[str, Any], default_vm: str) -> list[Any]:
    """Check an inject request's fields; return its ``resources``."""
    reject_unknown(data, _INJECT_FIELDS)
    if "type" not in data:
        raise ValueError("type is required (Preempt, Terminate, Redeploy, Reboot, Freeze)")
    resources = data.get("resources", [default_vm])
    if not isinstance(resources, list):
        raise TypeError("resources must be a list of VM names")
    return resources


def _event_answer(action: Callable[[str], SimEvent], request: web.Request) -> web.Response:
    """``action`` (start or cancel) on the event named in the path: 200 and the event, or 404."""
    try:
        event = action(request.match_info["event_id"])
    except KeyError:
        return error_response(404, "no such event")
    return json_response(200, event.to_json())
