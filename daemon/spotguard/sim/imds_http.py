"""JSON in and out of the IMDS simulator's HTTP handlers (``/metadata`` and ``/control``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, TypeVar

from aiohttp import web

_T = TypeVar("_T")

#: The ``error`` text of the simulator's own answers with these statuses (IMDS-like wording).
STATUS_MESSAGES: Final = {
    400: "Bad request",
    404: "Not found",
    410: "Gone. Scheduled Events is being enabled for this VM, retry later",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def compact_json(value: Any) -> str:
    """JSON without optional white space, as IMDS sends it."""
    return json.dumps(value, separators=(",", ":"))


def json_response(status: int, body: Any) -> web.Response:
    return web.Response(
        status=status,
        body=compact_json(body).encode(),
        content_type="application/json",
        charset="utf-8",
    )


def error_response(status: int, message: str, **extra: Any) -> web.Response:
    """``{"error": message, **extra}``: the shape of IMDS errors and of control API errors."""
    return json_response(status, {"error": message, **extra})


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request's body as a JSON object (``{}`` without a body); ValueError if it is not
    JSON, TypeError if it is JSON but not an object."""
    if not request.can_read_body:
        return {}
    try:
        data = json.loads(await request.read())
    except ValueError:
        raise ValueError("body is not JSON") from None
    if not isinstance(data, dict):
        raise TypeError("body must be a JSON object")
    return data


def reject_unknown(data: Mapping[str, Any], known: Collection[str], what: str = "fields") -> None:
    """ValueError ``unknown <what>: [...]`` if ``data`` has keys outside ``known``."""
    if unknown := set(data) - set(known):
        raise ValueError(f"unknown {what}: {sorted(unknown)}")


def optional(convert: Callable[[Any], _T], value: Any) -> _T | None:
    """``convert(value)``, or None for a JSON field that is absent or null."""
    return None if value is None else convert(value)
