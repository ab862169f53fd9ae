"""Composition root: the only place that builds concrete objects and starts tasks.

``watch`` is the read-only view of what Azure tells this VM: IMDS → store → one JSON line per
change. ``run`` is the agent: IMDS poller → notice store → responder (cordon, drain,
acknowledge), with the HTTP server for metrics and probes, as named tasks of one TaskGroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TextIO

import aiohttp
from prometheus_client import CollectorRegistry

from spotguard.checkpoint.protocol import CheckpointRequester
from spotguard.clock import Clock, SystemClock
from spotguard.config import Settings, parse_taint
from spotguard.engine.reporting import Reporter
from spotguard.engine.responder import Responder
from spotguard.engine.store import NoticeStore
from spotguard.errors import ConfigError, IdentityError
from spotguard.kube.client import JSON, KubeClient, KubeError, connect, user_agent
from spotguard.kube.nodes import NodeActions, node_state
from spotguard.model import ChangeType, NoticeChange, ScheduledEventsDocument, change_record
from spotguard.observability.health import Health, api_version_check
from spotguard.observability.http import serve_http
from spotguard.observability.logging import bind_notice, get_logger
from spotguard.observability.metrics import Metrics
from spotguard.queue.consumer import NoticeConsumer, QueueConsumer
from spotguard.queue.fleet import FleetCounter
from spotguard.queue.leader import LeaderElector
from spotguard.queue.notices import NoticeCounter
from spotguard.queue.recovery import RecoveryHandler
from spotguard.sinks.alertmanager import AlertmanagerSink
from spotguard.sinks.cloudevents import Origin
from spotguard.sinks.events import EventRecorder
from spotguard.sinks.servicebus import Auth, ServiceBusPublisher, auth_from
from spotguard.sources.identity import same_name, vm_name_from_provider_id
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


def _imds_client(
    settings: Settings, session: aiohttp.ClientSession, metrics: Metrics
) -> ImdsClient:
    return ImdsClient(
        session=session,
        base_url=str(settings.imds_url),
        events_api_version=settings.imds_events_api_version,
        instance_api_version=settings.imds_instance_api_version,
        request_timeout=settings.imds_request_timeout,
        spacer=RequestSpacer(),
        metrics=metrics,
    )


def _poller(
    settings: Settings,
    client: ImdsClient,
    on_document: Callable[[ScheduledEventsDocument, datetime], None],
    clock: Clock,
    metrics: Metrics,
    log: Logger,
) -> ImdsPoller:
    return ImdsPoller(
        client=client,
        on_document=on_document,
        clock=clock,
        metrics=metrics,
        log=log,
        interval=settings.poll_interval,
        max_backoff=settings.imds_max_backoff,
        enable_timeout=settings.imds_enable_timeout,
    )


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
            client = _imds_client(settings, session, metrics)
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
                        metrics.notice_seen(change.notice.kind, change.notice.source)
                    out.write(json.dumps(change_record(change)) + "\n")
                    out.flush()
                    if on_change is not None:
                        on_change(change)

            poller = _poller(settings, client, on_document, clock, metrics, log)
            async with asyncio.TaskGroup() as tasks:
                polling = tasks.create_task(poller.run(), name="imds-poller")
                await stop.wait()
                polling.cancel()
    finally:
        remove_handlers()
    return 0


async def _vm_name(settings: Settings, client: ImdsClient, log: Logger) -> str:
    """The VM name IMDS lists in ``Resources``: the override, or IMDS instance metadata."""
    if settings.vm_name:
        return settings.vm_name
    return await wait_for_vm_name(
        client,
        log=log,
        retry_interval=settings.poll_interval,
        hint_after=IDENTITY_HINT_AFTER,
    )


#: Exit code when this VM (IMDS) and this node (its providerID) are not the same machine.
EXIT_IDENTITY_MISMATCH = 3


async def _node_object(kube: KubeClient, node: str, log: Logger, interval: float) -> JSON:
    """The node, retried while the API server cannot be reached (the agent stays unready)."""
    while True:
        try:
            return await kube.request("GET", f"/api/v1/nodes/{node}")
        except KubeError as exc:
            log.warning("node_not_readable", error=str(exc))
        await asyncio.sleep(interval)


def _identity_mismatch(settings: Settings, vm_name: str, provider_id: str, log: Logger) -> bool:
    try:
        node_vm = vm_name_from_provider_id(provider_id)
    except IdentityError as exc:
        log.warning("provider_id_not_azure", error=str(exc), hint="VM name not cross-checked")
        return False
    if same_name(node_vm, vm_name):
        return False
    if settings.vm_name:
        log.warning("vm_name_override", vm_name=vm_name, node_provider_vm=node_vm)
        return False
    log.error(
        "identity_mismatch",
        imds_vm_name=vm_name,
        node_provider_vm=node_vm,
        hint="IMDS describes another VM than this node's spec.providerID: check "
        "SPOTGUARD_NODE_NAME (downward API spec.nodeName) and SPOTGUARD_IMDS_URL; set "
        "SPOTGUARD_VM_NAME to override the VM name",
    )
    return True


async def run(
    settings: Settings, *, clock: Clock | None = None, stop: asyncio.Event | None = None
) -> int:
    """The agent, until SIGTERM/SIGINT (or ``stop``)."""
    if not settings.node_name:
        raise ConfigError(
            "invalid setting SPOTGUARD_NODE_NAME=None: expected this node's name "
            "(downward API: spec.nodeName); `run` needs it"
        )
    node_name = settings.node_name
    servicebus = _servicebus_auth(settings)
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    remove_handlers = _stop_on_signals(stop)
    log = get_logger(command="run", node=node_name)
    metrics = Metrics(CollectorRegistry())
    kube = await _connect(settings, remove_handlers, "run")
    health = Health(blind_after=settings.blind_after, api_check=api_version_check(kube))
    metrics.track_imds_blind(health.imds_blind)
    try:
        async with (
            make_session() as session,
            serve_http(address=settings.http_address, registry=metrics.registry, health=health),
        ):
            imds = _imds_client(settings, session, metrics)
            return await _agent(
                settings, node_name, kube, imds, metrics, health, clock, stop, log, servicebus
            )
    finally:
        remove_handlers()
        await kube.close()


def _servicebus_auth(settings: Settings) -> Auth | None:
    """Publishing is on when an entity is named; then its credentials must be right at start."""
    return _auth(settings) if settings.servicebus_entity else None


def _auth(settings: Settings) -> Auth:
    secret = settings.servicebus_connection_string
    return auth_from(secret.get_secret_value() if secret else None, settings.servicebus_namespace)


async def _connect(
    settings: Settings, remove_handlers: Callable[[], None], command: str
) -> KubeClient:
    """The API server client; a kubeconfig or in-cluster problem is a configuration error."""
    try:
        return await connect(
            kubeconfig=None, timeout=settings.kube_request_timeout, agent=user_agent(command)
        )
    except KubeError as exc:
        remove_handlers()
        raise ConfigError(str(exc)) from exc


async def _agent(
    settings: Settings,
    node_name: str,
    kube: KubeClient,
    imds: ImdsClient,
    metrics: Metrics,
    health: Health,
    clock: Clock,
    stop: asyncio.Event,
    log: Logger,
    servicebus: Auth | None,
) -> int:
    async def identify() -> tuple[str, JSON]:
        vm = await _vm_name(settings, imds, log)
        return vm, await _node_object(kube, node_name, log, settings.poll_interval)

    identity = asyncio.create_task(identify(), name="identity")
    stopped = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({identity, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not identity.done():
        identity.cancel()
        return 0
    vm_name, node_obj = identity.result()
    state = node_state(node_obj, log)
    if _identity_mismatch(settings, vm_name, state.provider_id, log):
        return EXIT_IDENTITY_MISMATCH
    labels = state.labels
    nodepool = labels.get("kubernetes.azure.com/agentpool") or labels.get("agentpool")
    cluster = settings.cluster_name or labels.get("kubernetes.azure.com/cluster", "")
    metrics.node_info(
        nodepool=nodepool or "",
        vm_size=labels.get("node.kubernetes.io/instance-type", ""),
        priority=labels.get("kubernetes.azure.com/scalesetpriority", "regular"),
        cluster=cluster,
    )
    health.identity_resolved = True
    log = log.bind(vm_name=vm_name)
    log.info("agent_ready", nodepool=nodepool, dry_run=settings.dry_run)

    node = NodeActions(kube=kube, node=node_name, dry_run=settings.dry_run, log=log)
    events = EventRecorder(
        kube=kube,
        node=node_name,
        node_uid=state.uid,
        clock=clock,
        dry_run=settings.dry_run,
        log=log,
    )
    publisher = (
        ServiceBusPublisher(
            auth=servicebus,
            entity=settings.servicebus_entity or "",
            metrics=metrics,
            log=log,
            dry_run=settings.dry_run,
        )
        if servicebus is not None
        else None
    )
    reporter = Reporter(
        metrics=metrics,
        events=events,
        clock=clock,
        log=log,
        publisher=publisher,
        origin=Origin(cluster=cluster, node=node_name, nodepool=nodepool or ""),
    )
    self_pod = (
        (settings.pod_namespace, settings.pod_name)
        if settings.pod_name and settings.pod_namespace
        else None
    )
    alerts = (
        AlertmanagerSink(
            url=str(settings.alertmanager_url),
            runbook_base_url=settings.runbook_base_url,
            clock=clock,
            log=log,
            dry_run=settings.dry_run,
        )
        if settings.alertmanager_url is not None
        else None
    )
    # Step pods are reached directly by IP: never through a proxy, one short connection each.
    checkpoint_http = aiohttp.ClientSession(
        trust_env=False, connector=aiohttp.TCPConnector(limit=0, force_close=True)
    )
    checkpoints = CheckpointRequester(
        kube=kube,
        http=checkpoint_http,
        clock=clock,
        dry_run=settings.dry_run,
        api_timeout=settings.kube_request_timeout,
        log=log,
    )
    responder = Responder(
        settings=settings,
        node=node,
        kube=kube,
        imds=imds,
        reporter=reporter,
        metrics=metrics,
        clock=clock,
        vm_name=vm_name,
        node_name=node_name,
        nodepool=nodepool,
        self_pod=self_pod,
        log=log,
        alerts=alerts,
        checkpoints=checkpoints,
        cluster=cluster,
    )
    store = NoticeStore(vm_name=vm_name, node=node_name, safety_margin=settings.safety_margin)
    first = True

    def on_document(document: ScheduledEventsDocument, seen_at: datetime) -> None:
        nonlocal first
        changes = store.apply(document, seen_at)
        if first:
            first = False
            responder.reconcile(set(store.active))
        for change in changes:
            responder.submit(change)

    poller = _poller(settings, imds, on_document, clock, metrics, log)
    health.imds_last_success = lambda: poller.last_success
    async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tasks:
        stack.push_async_callback(checkpoint_http.close)
        if alerts is not None:
            await stack.enter_async_context(alerts)
        running = [
            tasks.create_task(poller.run(), name="imds-poller"),
            tasks.create_task(responder.run(), name="responder"),
        ]
        if publisher is not None:
            running.append(tasks.create_task(publisher.run(), name="servicebus-publisher"))
        health.tasks_running = lambda: not any(t.done() for t in running)
        await stop.wait()
        log.info("agent_stopping")
        for task in running:
            task.cancel()
    return 0


async def queue_mode(
    settings: Settings, *, clock: Clock | None = None, stop: asyncio.Event | None = None
) -> int:
    """``spotguard queue``: the leader-elected Event Grid consumer, until SIGTERM/SIGINT."""
    if not settings.events_queue:
        raise ConfigError("invalid setting SPOTGUARD_EVENTS_QUEUE=None: queue mode needs it")
    if not settings.pod_name or not settings.pod_namespace:
        raise ConfigError(
            "queue mode needs SPOTGUARD_POD_NAME and SPOTGUARD_POD_NAMESPACE (downward API): "
            "they name this replica in the leader Lease"
        )
    auth = _auth(settings)
    clock = clock or SystemClock()
    stop = stop or asyncio.Event()
    remove_handlers = _stop_on_signals(stop)
    log = get_logger(command="queue", pod=settings.pod_name)
    metrics = Metrics(CollectorRegistry())
    kube = await _connect(settings, remove_handlers, "queue")
    health = Health(blind_after=settings.blind_after, api_check=api_version_check(kube))
    health.uses_imds = False
    health.identity_resolved = True
    try:
        async with serve_http(
            address=settings.http_address, registry=metrics.registry, health=health
        ):
            fleet = FleetCounter(
                kube=kube,
                namespace=settings.pod_namespace,
                cluster=settings.cluster_name or "",
                clock=clock,
                metrics=metrics,
                log=log,
                dry_run=settings.dry_run,
            )
            recovery = RecoveryHandler(
                kube=kube,
                clock=clock,
                metrics=metrics,
                log=log,
                cluster=settings.cluster_name or "",
                fleet=fleet,
                not_ready_after=settings.queue_not_ready_after,
                taint=parse_taint(settings.queue_taint),
                dry_run=settings.dry_run,
            )
            leader = LeaderElector(
                kube=kube,
                namespace=settings.pod_namespace,
                identity=settings.pod_name,
                clock=clock,
                log=log,
                lease_duration=settings.queue_lease_duration,
                renew_deadline=settings.queue_renew_deadline,
                retry_period=settings.queue_retry_period,
                metrics=metrics,
            )
            consumer = QueueConsumer(
                auth=auth,
                queue=settings.events_queue,
                recovery=recovery,
                leader=leader,
                metrics=metrics,
                clock=clock,
                log=log,
            )
            consumers: dict[str, QueueConsumer | NoticeConsumer] = {"queue-consumer": consumer}
            if settings.queue_notices_subscription:
                consumers["notice-consumer"] = NoticeConsumer(
                    auth=auth,
                    subscription=settings.queue_notices_subscription,
                    counter=NoticeCounter(fleet=fleet, kube=kube, log=log),
                    leader=leader,
                    metrics=metrics,
                    log=log,
                )
            with contextlib.suppress(KubeError):
                await recovery.prime_metrics()
            async with asyncio.TaskGroup() as tasks:
                running = [
                    tasks.create_task(leader.run(), name="leader-election"),
                    *(tasks.create_task(c.run(), name=name) for name, c in consumers.items()),
                    tasks.create_task(
                        _while_leading(
                            leader,
                            lambda: recovery.run_reconciler(settings.queue_reconcile_interval),
                        ),
                        name="recovery-reconciler",
                    ),
                ]
                health.tasks_running = lambda: not any(t.done() for t in running)
                log.info(
                    "queue_mode_started",
                    queue=settings.events_queue,
                    notices=settings.queue_notices_subscription,
                )
                await stop.wait()
                log.info("queue_mode_stopping")
                for task in running:
                    task.cancel()
        return 0
    finally:
        remove_handlers()
        await kube.close()


async def _while_leading(
    leader: LeaderElector, work: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Run ``work`` only while this replica leads (standbys write nothing)."""
    while True:
        await leader.is_leader.wait()
        task = asyncio.create_task(work())
        lost = asyncio.create_task(leader.lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
            lost.cancel()
            await asyncio.gather(task, lost, return_exceptions=True)
