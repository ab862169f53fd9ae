"""Composition root: the only place that builds concrete objects and starts tasks.

``watch`` is the read-only view of what Azure tells this VM: IMDS → store → one JSON line per
change. ``spotguard run`` (the agent) will be composed here too.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from datetime import datetime
from typing import TextIO

from prometheus_client import CollectorRegistry

from spotguard.clock import Clock, SystemClock
from spotguard.config import Settings
from spotguard.engine.store import NoticeStore
from spotguard.model import ChangeType, NoticeChange, ScheduledEventsDocument, change_record
from spotguard.observability.logging import bind_notice, get_logger
from spotguard.observability.metrics import Metrics
from spotguard.sources.imds import (
    ImdsClient,
    ImdsPoller,
    Logger,
    RequestSpacer,
    make_session,
    wait_for_vm_name,
)

#: How long identity may stay unresolved before the log names the likely cause.
IDENTITY_HINT_AFTER = 30.0


def _stop_on_signals(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def remove() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return remove


async def watch(
    settings: Settings,
    *,
    out: TextIO,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    on_change: Callable[[NoticeChange], None] | None = None,
) -> int:
    """Print this VM's scheduled-event changes until SIGINT/SIGTERM (or ``stop`` is set)."""
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    remove_handlers = _stop_on_signals(stop)
    log = get_logger(command="watch")
    metrics = Metrics(CollectorRegistry())
    try:
        async with make_session() as session:
            client = ImdsClient(
                session=session,
                base_url=str(settings.imds_url),
                events_api_version=settings.imds_events_api_version,
                instance_api_version=settings.imds_instance_api_version,
                request_timeout=settings.imds_request_timeout,
                spacer=RequestSpacer(),
                metrics=metrics,
            )
            resolve = asyncio.create_task(_vm_name(settings, client, log))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({resolve, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not resolve.done():
                resolve.cancel()
                stopped.cancel()
                return 0
            stopped.cancel()
            vm_name = resolve.result()
            node = settings.node_name or vm_name
            log = log.bind(vm_name=vm_name, node=node)
            log.info("watching", imds_url=str(settings.imds_url))
            store = NoticeStore(vm_name=vm_name, node=node, safety_margin=settings.safety_margin)

            def on_document(document: ScheduledEventsDocument, seen_at: datetime) -> None:
                for change in store.apply(document, seen_at):
                    bind_notice(log, change.notice).info(
                        "notice_" + change.change.value, status=change.notice.status.value
                    )
                    if change.change is ChangeType.NEW:
                        metrics.notices.labels(
                            kind=change.notice.kind.value, source=change.notice.source.value
                        ).inc()
                    out.write(json.dumps(change_record(change)) + "\n")
                    out.flush()
                    if on_change is not None:
                        on_change(change)

            poller = ImdsPoller(
                client=client,
                on_document=on_document,
                clock=clock,
                metrics=metrics,
                log=log,
                interval=settings.poll_interval,
                max_backoff=settings.imds_max_backoff,
                enable_timeout=settings.imds_enable_timeout,
            )
            async with asyncio.TaskGroup() as tasks:
                polling = tasks.create_task(poller.run(), name="imds-poller")
                await stop.wait()
                polling.cancel()
    finally:
        remove_handlers()
    return 0


async def _vm_name(settings: Settings, client: ImdsClient, log: Logger) -> str:
    if settings.vm_name:
        return settings.vm_name
    return await wait_for_vm_name(
        client,
        log=log,
        retry_interval=settings.poll_interval,
        hint_after=IDENTITY_HINT_AFTER,
    )
