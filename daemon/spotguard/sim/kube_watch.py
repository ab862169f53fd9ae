"""Watch streams: initial state, resume by resourceVersion, 410 Expired, timeouts, bookmarks.

A watch with a selector sees what a real one sees: an object that stops matching arrives as
DELETED, one that starts matching as ADDED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spotguard.sim.kube_api import object_filter
from spotguard.sim.kube_errors import bad_request, status_object
from spotguard.sim.kube_paths import RequestInfo, parse_bool
from spotguard.sim.kube_resources import ResourceType
from spotguard.sim.kube_settings import EmulatorSettings
from spotguard.sim.kube_store import Change, ObjectStore


@dataclass(frozen=True, slots=True)
class WatchRequest:
    rtype: ResourceType
    namespace: str | None
    name: str | None
    accept: Callable[[Mapping[str, Any]], bool]
    resource_version: int | None  # None: send the current state first
    timeout: float
    bookmarks: bool
    bookmark_interval: float
    initial_events_end: bool


def watch_request(
    rtype: ResourceType, info: RequestInfo, query: Mapping[str, str], settings: EmulatorSettings
) -> WatchRequest:
    """Validate a watch's parameters (400 on bad ones) before the stream starts."""
    accept = object_filter(rtype, query)
    rv_text = query.get("resourceVersion", "")
    send_initial = parse_bool(query.get("sendInitialEvents"), "sendInitialEvents")
    rv: int | None = None
    if rv_text not in ("", "0") and not send_initial:
        try:
            rv = int(rv_text)
        except ValueError:
            raise bad_request(f"invalid resource version {rv_text!r}") from None
    timeout = settings.watch_timeout_cap
    if query.get("timeoutSeconds"):
        try:
            timeout = min(timeout, max(0.0, float(query["timeoutSeconds"])))
        except ValueError:
            raise bad_request(f"invalid timeoutSeconds {query['timeoutSeconds']!r}") from None
    return WatchRequest(
        rtype=rtype,
        namespace=info.namespace if rtype.namespaced else None,
        name=info.name,
        accept=accept,
        resource_version=rv,
        timeout=timeout,
        bookmarks=parse_bool(query.get("allowWatchBookmarks"), "allowWatchBookmarks"),
        bookmark_interval=settings.bookmark_interval,
        initial_events_end=send_initial,
    )


def _line(kind: str, raw: bytes) -> bytes:
    return b'{"type":"' + kind.encode() + b'","object":' + raw + b"}\n"


def _expired(wanted: int, oldest: int) -> bytes:
    status = status_object(410, f"too old resource version: {wanted} ({oldest})", "Expired")
    return _line("ERROR", json.dumps(status).encode())


def _bookmark(request: WatchRequest, rv: int, *, initial_end: bool = False) -> bytes:
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    obj = {"kind": request.rtype.kind, "apiVersion": request.rtype.api_version, "metadata": meta}
    return _line("BOOKMARK", json.dumps(obj).encode())


def _event(request: WatchRequest, change: Change) -> bytes | None:
    if change.rtype is not request.rtype:
        return None
    new = change.new
    if request.namespace is not None and new.namespace != request.namespace:
        return None
    if request.name is not None and new.name != request.name:
        return None
    now_ok = request.accept(new.obj)
    if change.type != "MODIFIED" or change.old is None:
        return _line(change.type, new.raw) if now_ok else None
    was_ok = request.accept(change.old.obj)
    if was_ok and now_ok:
        return _line("MODIFIED", new.raw)
    if now_ok:
        return _line("ADDED", new.raw)
    if was_ok:
        return _line("DELETED", new.raw)
    return None


async def stream(
    store: ObjectStore, request: WatchRequest, stop: asyncio.Event
) -> AsyncIterator[bytes]:
    """Lines of the watch until its timeout, ``stop`` being set, or 410."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + request.timeout
    if request.resource_version is None:
        cursor = store.resource_version
        for stored in store.items(request.rtype, request.namespace):
            if (request.name is None or stored.name == request.name) and request.accept(stored.obj):
                yield _line("ADDED", stored.raw)
        if request.initial_events_end:
            yield _bookmark(request, cursor, initial_end=True)
    else:
        # A version from the future starts from now (a real apiserver would wait, then 504).
        cursor = min(request.resource_version, store.resource_version)
    waiter = asyncio.Event()
    store.add_waiter(waiter)
    next_bookmark = loop.time() + request.bookmark_interval
    try:
        while True:
            waiter.clear()  # before reading, so a change made while we yield wakes the wait below
            changes = store.changes_since(cursor)
            if changes is None:
                yield _expired(cursor, store.oldest_resource_version)
                return
            for change in changes:
                cursor = change.rv
                line = _event(request, change)
                if line is not None:
                    yield line
            now = loop.time()
            if stop.is_set() or now >= deadline:
                if request.bookmarks:
                    yield _bookmark(request, max(cursor, store.resource_version))
                return
            if request.bookmarks and now >= next_bookmark:
                yield _bookmark(request, max(cursor, store.resource_version))
                next_bookmark = now + request.bookmark_interval
            wake = min(deadline, next_bookmark) if request.bookmarks else deadline
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), timeout=max(0.0, wake - now))
    finally:
        store.remove_waiter(waiter)
