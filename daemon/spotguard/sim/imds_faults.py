"""Injected faults: what they are, which Scheduled Events requests they apply to, what they answer.

A fault replaces the normal answer and never changes the simulator's state. Faults apply only to
requests that passed IMDS's own checks (headers, api-version, rate limit, enablement), in the
order they were added.
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from aiohttp import web

from spotguard.sim.imds_http import (
    STATUS_MESSAGES,
    compact_json,
    error_response,
    optional,
    reject_unknown,
)
from spotguard.sim.imds_model import SCHEDULED, SimEvent, ceil_second


class FaultKind(enum.StrEnum):
    STATUS = "status"  # `status` (default 500) with an Azure-like JSON error body
    HTML = "html"  # `status` (default 500) with an HTML error page
    BODY = "body"  # `status` (default 200) with the given bytes as application/json
    TRUNCATED = "truncated"  # 200 with the current document cut in half
    NON_UTF8 = "non_utf8"  # 200 with bytes that are not UTF-8
    HUGE = "huge"  # 200 with a valid document of about `size` bytes
    DELAY = "delay"  # the normal answer after `delay` seconds
    DROP = "drop"  # close the connection without an answer


_DEFAULT_STATUS: Final = {FaultKind.STATUS: 500, FaultKind.HTML: 500, FaultKind.BODY: 200}
_DEFAULT_HUGE_SIZE: Final = 4 * 1024 * 1024
_FIELDS: Final = (
    "kind", "status", "count", "seconds", "delay", "body", "body_base64", "size", "vm", "method",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Fault:
    """An answer to give Scheduled Events requests instead of the normal one; state is untouched.

    It applies to the next ``count`` requests (default 1), or to every request for ``seconds``
    after it was added, of ``vm`` (default every VM) and ``method`` (default GET and POST).
    Requests rejected earlier (400, 429, 410) do not consume it.
    """

    kind: FaultKind
    status: int | None = None
    count: int | None = None
    seconds: float | None = None
    delay: float = 0.0
    body: bytes = b""
    size: int = _DEFAULT_HUGE_SIZE
    vm: str | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        if self.count is not None and self.count < 1:
            raise ValueError("count must be at least 1")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError("seconds must be positive")
        if self.kind is FaultKind.DELAY and self.delay <= 0:
            raise ValueError("a delay fault needs delay > 0")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if self.method is not None and self.method not in ("GET", "POST"):
            raise ValueError("method must be GET or POST")

    @property
    def answer_status(self) -> int:
        return self.status or _DEFAULT_STATUS.get(self.kind, 200)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        """The control API's form (``body`` text or ``body_base64``); ValueError if invalid."""
        reject_unknown(data, _FIELDS, "fault fields")
        try:
            kind = FaultKind(data.get("kind", ""))
        except ValueError:
            raise ValueError(f"kind must be one of {[k.value for k in FaultKind]}") from None
        body = str(data.get("body", "")).encode()
        if "body_base64" in data:
            try:
                body = base64.b64decode(data["body_base64"], validate=True)
            except (binascii.Error, TypeError):
                raise ValueError("body_base64 is not base64") from None
        try:
            return cls(
                kind=kind,
                status=optional(int, data.get("status")),
                count=optional(int, data.get("count")),
                seconds=optional(float, data.get("seconds")),
                delay=float(data.get("delay", 0.0)),
                body=body,
                size=int(data.get("size", _DEFAULT_HUGE_SIZE)),
                vm=optional(str, data.get("vm")),
                method=optional(str, data.get("method")),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid fault: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "status": self.answer_status,
            "count": self.count,
            "seconds": self.seconds,
            "delay": self.delay,
            "body_base64": base64.b64encode(self.body).decode() if self.body else None,
            "size": self.size if self.kind is FaultKind.HUGE else None,
            "vm": self.vm,
            "method": self.method,
        }


@dataclass(slots=True)
class _Armed:
    """A pending fault and what is left of it; exactly one of the two limits is finite."""

    fault: Fault
    until: float  # loop time when a `seconds` fault ends
    remaining: float  # answers left of a `count` fault

    def expired(self, now: float) -> bool:
        return now >= self.until or self.remaining <= 0


class FaultQueue:
    """The pending faults, in the order they were added. ``now`` is always loop time."""

    def __init__(self) -> None:
        self._armed: list[_Armed] = []

    def add(self, fault: Fault, now: float) -> None:
        if fault.seconds is not None:
            self._armed.append(_Armed(fault, until=now + fault.seconds, remaining=math.inf))
        else:
            self._armed.append(_Armed(fault, until=math.inf, remaining=fault.count or 1))

    def pending(self, now: float) -> tuple[Fault, ...]:
        self._armed = [armed for armed in self._armed if not armed.expired(now)]
        return tuple(armed.fault for armed in self._armed)

    def take(self, vm: str, method: str, now: float) -> Fault | None:
        """The first pending fault for a ``method`` request to ``vm``, using up one answer."""
        self.pending(now)
        for armed in self._armed:
            fault = armed.fault
            if fault.vm in (None, vm) and fault.method in (None, method):
                armed.remaining -= 1
                return fault
        return None

    def clear(self, now: float) -> int:
        """Remove every fault; return how many were still pending."""
        count = len(self.pending(now))
        self._armed.clear()
        return count


_HTML_PAGE: Final = (
    b"<!DOCTYPE html>\r\n<html><head><title>{status} - Service Error</title></head>\r\n"
    b"<body><h1>Server Error</h1><h2>{status} - The server encountered an error while "
    b"processing the request.</h2></body></html>\r\n"
)
_NON_UTF8: Final = b'{"DocumentIncarnation":1,"Events":[{"EventId":"\xff\xfe\xc3\x28"}]}'


def fault_response(
    fault: Fault, document: Mapping[str, Any], version: str, now: datetime
) -> web.Response:
    """The answer ``fault`` gives instead of ``document`` (the Scheduled Events document at
    ``version``, wall time ``now``). Not for DELAY and DROP, which are not answers."""
    status = fault.answer_status
    if fault.kind is FaultKind.STATUS:
        return error_response(status, STATUS_MESSAGES.get(status, "Error"))
    if fault.kind is FaultKind.HTML:
        page = _HTML_PAGE.replace(b"{status}", str(status).encode())
        return web.Response(status=status, body=page, content_type="text/html")
    if fault.kind is FaultKind.BODY:
        body = fault.body
    elif fault.kind is FaultKind.TRUNCATED:
        whole = compact_json(document).encode()
        body = whole[: max(1, len(whole) // 2)]
    elif fault.kind is FaultKind.NON_UTF8:
        body = _NON_UTF8
    elif fault.kind is FaultKind.HUGE:
        body = _huge_document(fault.size, document["DocumentIncarnation"], version, now)
    else:
        raise ValueError(f"a {fault.kind.value} fault has no answer")
    return web.Response(status=status, body=body, content_type="application/json")


def _huge_document(size: int, incarnation: int, version: str, now: datetime) -> bytes:
    """A valid document of about ``size`` bytes: many events for VMs nobody runs."""
    filler = SimEvent(
        event_id="00000000-0000-0000-0000-000000000000",
        event_type="Freeze",
        resources=tuple(f"filler_{i}" for i in range(50)),
        status=SCHEDULED,
        not_before=ceil_second(now + timedelta(minutes=15)),
        description="filler",
        event_source="Platform",
        duration_s=5,
        started_for=5,
    ).imds(version)
    one = compact_json(filler)
    count = max(1, size // (len(one) + 1))
    head = f'{{"DocumentIncarnation":{incarnation},"Events":['
    return (head + ",".join([one] * count) + "]}").encode()
