"""The emulator's control endpoints under ``/_sim/``, for tests and the demo in other processes.

A real apiserver never serves these paths, and they are not written to the request log.

======  ========================  ======================================================
GET     /_sim/requests?since=N    request log entries after sequence number N, and ``next``
DELETE  /_sim/requests            forget the log (sequence numbers keep counting)
GET     /_sim/faults              scripted faults with their hit counts
POST    /_sim/faults              add one (see ``kube_faults.parse_rule``); answers it
DELETE  /_sim/faults[/ID]         remove all, or one
POST    /_sim/objects             seed objects as they are: one, a list, or {"objects": [...]}
GET     /_sim/settings            the knobs (``kube_settings.EmulatorSettings``)
PATCH   /_sim/settings            change some of them
======  ========================  ======================================================
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from spotguard.sim.kube_errors import ApiError

if TYPE_CHECKING:
    from spotguard.sim.cluster import ClusterEmulator


def _json(status: int, body: Any) -> web.Response:
    return web.json_response(body, status=status)


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"error": message})


class ControlEndpoints:
    def __init__(self, emulator: ClusterEmulator) -> None:
        self._emulator = emulator

    async def handle(self, raw: web.BaseRequest) -> web.StreamResponse:
        parts = raw.path.strip("/").split("/")[1:]
        body: Any = None
        data = await raw.read()
        if data:
            try:
                body = json.loads(data)
            except ValueError:
                return _error(400, "the body is not valid JSON")
        route = (raw.method, parts[0] if parts else "")
        try:
            match route:
                case ("GET", "requests"):
                    return self._requests(raw)
                case ("DELETE", "requests"):
                    self._emulator.requests.clear()
                    return _json(200, {"next": self._emulator.requests.next_seq})
                case ("GET", "faults"):
                    return _json(
                        200, {"faults": [r.as_dict() for r in self._emulator.faults.rules()]}
                    )
                case ("POST", "faults"):
                    if not isinstance(body, dict):
                        return _error(400, "a fault is a JSON object")
                    return _json(201, self._emulator.faults.add(body).as_dict())
                case ("DELETE", "faults"):
                    return self._delete_faults(parts)
                case ("POST", "objects"):
                    return self._seed(body)
                case ("GET", "settings"):
                    return _json(200, self._emulator.settings.as_dict())
                case ("PATCH", "settings"):
                    if not isinstance(body, dict):
                        return _error(400, "settings are a JSON object")
                    self._emulator.settings.update(body)
                    return _json(200, self._emulator.settings.as_dict())
                case ("GET", "healthz"):
                    return _json(200, {"ok": True})
        except ValueError as exc:
            return _error(400, str(exc))
        return _error(404, f"no control endpoint {raw.method} {raw.path}")

    def _requests(self, raw: web.BaseRequest) -> web.Response:
        try:
            since = int(raw.query.get("since", "0"))
        except ValueError:
            return _error(400, "since must be an integer")
        log = self._emulator.requests
        entries = [r.as_dict() for r in log.since(since)]
        return _json(200, {"requests": entries, "next": log.next_seq})

    def _delete_faults(self, parts: list[str]) -> web.Response:
        faults = self._emulator.faults
        if len(parts) == 1:
            faults.clear()
            return _json(200, {"faults": []})
        try:
            removed = faults.remove(int(parts[1]))
        except ValueError:
            return _error(400, "a fault id is an integer")
        return _json(200, {"removed": True}) if removed else _error(404, f"no fault {parts[1]}")

    def _seed(self, body: Any) -> web.Response:
        if isinstance(body, dict) and "objects" in body:
            body = body["objects"]
        objects = body if isinstance(body, list) else [body]
        if not all(isinstance(o, dict) for o in objects):
            return _error(400, "objects are JSON objects")
        try:
            created = self._emulator.seed(*objects)
        except ValueError as exc:
            return _error(400, str(exc))
        except ApiError as exc:  # AlreadyExists
            return _error(exc.code, exc.message)
        return _json(201, {"objects": created})
