"""The responder: turns notice changes into the plan for each, run against the deadline.

One task per active notice. For a notice that touches the node: record it on the node, taint and
cordon (one write, the first thing sent) while the node's pipeline steps are asked to checkpoint,
then drain with the deadline's time budget (steps saving a checkpoint are held until they exit
or their checkpoint deadline passes), then acknowledge when policy and DESIGN.md's rule allow.
A cancelled notice is rolled back (taint, record, and the cordon if it was ours and nothing else
is active); a completed one too, since a VM that is still here after its event came through
(reboot, redeploy) is usable again.

Every step is idempotent and recorded on the node, so an agent that restarts mid-drain resumes
from the annotation: finished steps are not redone and Events are not duplicated (their names
are deterministic).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import structlog

from spotguard.checkpoint.protocol import (
    CheckpointRequester,
    CheckpointRound,
    RoundRequest,
    stop_round,
)
from spotguard.checkpoint.targets import METRIC_OUTCOME, Outcome, summary
from spotguard.clock import Clock, rfc3339
from spotguard.config import Action, Settings
from spotguard.engine.policy import DRAINED_PHASES, Plan, acknowledgement_allowed, plan_for
from spotguard.engine.reporting import Reporter
from spotguard.errors import IdentityError, ImdsError
from spotguard.kube.client import KubeClient, KubeError
from spotguard.kube.drain import DrainOutcome, DrainResult, PodOutcome, drain_node
from spotguard.kube.nodes import NodeActions, NodeState, Phase, node_state
from spotguard.model import ChangeType, Kind, Notice, NoticeChange
from spotguard.observability.metrics import Metrics
from spotguard.sinks.alertmanager import AlertmanagerSink
from spotguard.sinks.cloudevents import Phase as MessagePhase
from spotguard.sinks.events import Reason
from spotguard.sources.identity import vm_name_from_provider_id
from spotguard.sources.imds import ImdsClient

Logger = structlog.typing.FilteringBoundLogger

#: The drain waits for the cordon at most this share of the time left (and at least the
#: minimum): without the cordon, replacements of evicted pods land right back on the node.
CORDON_HOLD_SHARE = 0.5
CORDON_HOLD_MIN = 1.0
#: Pod outcomes that leave a pod on the node at the end of a drain.
LEFT_BEHIND = frozenset({PodOutcome.STILL_PRESENT, PodOutcome.BLOCKED, PodOutcome.FAILED})
#: The drain waits at most this long for the checkpoint requests to be on their way: they need
#: a Secret read first, which must not queue behind a node's worth of evictions.
CHECKPOINTS_FIRST = 0.5
#: How often to look again whether every node of a multi-VM event has drained.
ACK_RECHECK_INTERVAL = 1.0


class Responder:
    def __init__(
        self,
        *,
        settings: Settings,
        node: NodeActions,
        kube: KubeClient,
        imds: ImdsClient,
        reporter: Reporter,
        metrics: Metrics,
        clock: Clock,
        vm_name: str,
        node_name: str,
        nodepool: str | None,
        self_pod: tuple[str, str] | None,
        log: Logger,
        alerts: AlertmanagerSink | None = None,
        checkpoints: CheckpointRequester | None = None,
        cluster: str = "",
    ) -> None:
        self._settings = settings
        self._node = node
        self._kube = kube
        self._imds = imds
        self._report = reporter
        self._metrics = metrics
        self._clock = clock
        self._vm_name = vm_name
        self._node_name = node_name
        self._nodepool = nodepool
        self._self_pod = self_pod
        self._log = log
        self._alerts = alerts
        self._checkpoints = checkpoints
        self._cluster = cluster
        self._background: set[asyncio.Task[None]] = set()
        self._queue: asyncio.Queue[NoticeChange | set[str]] = asyncio.Queue()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._active: dict[str, Notice] = {}
        # One drain at a time: a second notice waits and then finds little or nothing left.
        self._drain_lock = asyncio.Lock()

    # --- input -------------------------------------------------------------------------------

    def submit(self, change: NoticeChange) -> None:
        self._queue.put_nowait(change)

    def reconcile(self, active_event_ids: set[str]) -> None:
        """After the first IMDS document: forget node records of events that are gone."""
        self._queue.put_nowait(set(active_event_ids))

    async def run(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                try:
                    if isinstance(item, set):
                        await self._reconcile(item)
                    else:
                        await self._on_change(item)
                except Exception:  # a bug handling one change must not end the agent
                    self._log.exception("responder_error", item=repr(item)[:200])
        finally:
            await self._cancel_all()
            await self._report.flush()
            if self._background:  # direct alerts bound their own time (a few seconds)
                await asyncio.gather(*self._background, return_exceptions=True)

    # --- changes -------------------------------------------------------------------------------

    async def _on_change(self, change: NoticeChange) -> None:
        notice = change.notice
        if change.change is ChangeType.NEW:
            self._active[notice.event_id] = notice
            self._report.noticed(notice)
            self._report.publish(notice, MessagePhase.NOTICED)
            self._start(notice)
        elif change.change is ChangeType.UPDATED:
            self._active[notice.event_id] = notice
            self._report.log(notice).info(
                "notice_updated", status=notice.status.value, deadline=rfc3339(notice.deadline)
            )
        else:
            self._active.pop(notice.event_id, None)
            task = self._tasks.pop(notice.event_id, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._forget(notice, cancelled=change.cancelled)
        self._report.active(self._active)

    def _start(self, notice: Notice) -> None:
        task = asyncio.create_task(self._guarded(notice), name=f"notice-{notice.event_id}")
        self._tasks[notice.event_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(notice.event_id, None))

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- one notice --------------------------------------------------------------------------

    async def _guarded(self, notice: Notice) -> None:
        try:
            await self._respond(notice)
        except Exception:  # logged here, not lost in an unawaited task; the agent goes on
            self._report.log(notice).exception("notice_response_crashed")

    async def _respond(self, notice: Notice) -> None:
        log = self._report.log(notice)
        plan = plan_for(notice, self._settings, self_pod=self._self_pod)
        log.info(
            "notice_new",
            status=notice.status.value,
            not_before=rfc3339(notice.not_before),
            deadline=rfc3339(notice.deadline),
            seconds_left=round((notice.deadline - self._clock.now()).total_seconds(), 3),
            action=plan.action.value,
            resources=list(notice.resources),
        )
        if notice.kind is Kind.PREEMPT:
            self._alert(notice, missed_by=None)
        if not plan.touches_node:
            # "record" touches nothing in the cluster, Events included: log and metrics only.
            log.info("notice_recorded_only", hint=f"policy for {notice.kind.value} is record")
            return
        self._report.event(notice, Reason.NOTICE, _notice_message(notice))
        deadline = wall_to_loop(notice.deadline, self._clock)
        cordon = asyncio.create_task(self._cordon(notice, deadline), name="cordon")
        # Checkpoint requests go out beside the cordon, never after it.
        starting = self._start_checkpoints(notice, plan, deadline)
        # The cordon normally takes milliseconds. Evicting before it lands would let the
        # evicted pods' replacements be scheduled right back onto this node, so the drain waits
        # for it — but only for half the time left: pods must still leave before the VM does.
        hold = max(
            CORDON_HOLD_MIN, CORDON_HOLD_SHARE * (deadline - asyncio.get_running_loop().time())
        )
        try:
            state = await asyncio.wait_for(asyncio.shield(cordon), hold)
        except TimeoutError:
            log.warning("drain_without_cordon", waited_s=round(hold, 3))
            state = None
        round_ = None
        reporting = None
        try:
            # Bounded by one pod list (the API timeout): the holds must be known before any
            # eviction, or a step could be evicted (not retried) while it saves.
            round_ = await starting if starting is not None else None
            if round_ is not None:
                # Reported as soon as the steps have answered, not after an acknowledgement
                # that may wait for other nodes.
                reporting = asyncio.create_task(self._report_checkpoints(notice, round_))
            await self._carry_out(notice, plan, state, round_)
            if reporting is not None:
                await reporting
        finally:
            cordon.cancel()
            if starting is not None and not starting.done():
                starting.cancel()
            if reporting is not None and not reporting.done():
                reporting.cancel()
            await stop_round(round_)
            with contextlib.suppress(asyncio.CancelledError):
                await cordon

    def _start_checkpoints(
        self, notice: Notice, plan: Plan, deadline: float
    ) -> asyncio.Task[CheckpointRound] | None:
        if self._checkpoints is None or plan.action is not Action.DRAIN:
            return None
        budget = self._settings.stop_budget
        request = RoundRequest(
            event_id=notice.event_id,
            kind=notice.kind.value,
            node=self._node_name,
            deadline=deadline - budget,
            deadline_wall=notice.deadline - timedelta(seconds=budget),
        )
        return asyncio.create_task(
            self._checkpoints.start(request, self._report.log(notice)), name="checkpoints"
        )

    async def _report_checkpoints(self, notice: Notice, round_: CheckpointRound) -> None:
        results = await round_.wait()
        if not results:
            return
        sent = [r.sent_at for r in results if r.sent_at is not None]
        if sent:
            now = asyncio.get_running_loop().time()
            since = self._report.seconds_since_notice(notice) - (now - max(sent))
            self._metrics.notice_to_action("checkpoint", max(0.0, since))
        for result in results:
            self._metrics.action("checkpoint", METRIC_OUTCOME[result.outcome])
            if result.outcome is Outcome.SAVED:
                self._metrics.checkpoint_finished(result.seconds)
        message = summary(list(results))
        self._report.log(notice).info("checkpoints_finished", summary=message)
        self._report.publish(
            notice,
            MessagePhase.CHECKPOINTED,
            result="saved" if all(r.outcome is Outcome.SAVED for r in results) else "partial",
            steps=[
                {
                    "namespace": r.namespace,
                    "pod": r.name,
                    "result": r.outcome.value,
                    "location": r.location or None,
                    "bytes": r.size,
                }
                for r in results
            ],
        )
        self._report.event(notice, Reason.CHECKPOINT_REQUESTED, message)

    async def _cordon(self, notice: Notice, deadline: float) -> NodeState | None:
        """Record, taint and cordon; retried with backoff until it works or the deadline."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            try:
                state = await self._node.begin(
                    event_id=notice.event_id,
                    kind=notice.kind.value,
                    deadline=rfc3339(notice.deadline) or "",
                )
            except KubeError as exc:
                self._report.action(notice, "cordon", "error", error=str(exc))
                if loop.time() + delay >= deadline:
                    return None
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            record = state.notices.get(notice.event_id)
            ours = bool(record and record.cordoned_by_us)
            self._report.action(notice, "cordon", "success", cordoned_by_us=ours)
            self._report.publish(
                notice, MessagePhase.CORDONED, result="success", cordoned_by_us=ours, taint=True
            )
            self._report.action(notice, "taint", "success", timed=False)
            self._report.event(
                notice,
                Reason.CORDONED,
                "cordoned and tainted by spotguard"
                if ours
                else "tainted by spotguard; the node was already cordoned by someone else",
            )
            return state

    async def _carry_out(
        self,
        notice: Notice,
        plan: Plan,
        state: NodeState | None,
        round_: CheckpointRound | None,
    ) -> None:
        log = self._report.log(notice)
        phase = _phase_of(state, notice.event_id)
        if plan.action is Action.DRAIN and phase not in DRAINED_PHASES:
            phase = await self._drain(notice, plan, round_)
        elif phase in DRAINED_PHASES:
            log.info("notice_resumed", phase=phase.value if phase else None)
        if plan.acknowledge and phase is Phase.DRAINED:
            await self._acknowledge(notice)

    async def _drain(self, notice: Notice, plan: Plan, round_: CheckpointRound | None) -> Phase:
        log = self._report.log(notice)
        deadline = wall_to_loop(notice.deadline, self._clock)
        holds = round_.holds if round_ is not None else {}
        listing = round_.listing if round_ is not None else None
        if round_ is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(round_.all_sent.wait(), CHECKPOINTS_FIRST)
        async with self._drain_lock:
            await self._set_phase(notice, Phase.CHECKPOINTING if holds else Phase.DRAINING)
            outcome = await drain_node(
                self._kube,
                self._node_name,
                deadline=deadline,
                log=log,
                options=plan.drain,
                holds=holds,
                listing=listing,
            )
        self._record_drain(notice, outcome, deadline)
        phase = Phase.DRAINED if outcome.result is DrainResult.DRAINED else Phase.FAILED
        await self._set_phase(notice, phase)
        return phase

    def _record_drain(self, notice: Notice, outcome: DrainOutcome, deadline: float) -> None:
        counts = outcome.counts
        self._metrics.drain_finished(
            notice.kind, outcome.result.value, outcome.finished_at - outcome.started_at
        )
        for pod in outcome.pods:
            if pod.outcome is PodOutcome.EVICTED:
                self._metrics.action("evict", "success")
            elif pod.outcome is PodOutcome.DELETED_AFTER_PDB:
                self._metrics.action("delete", "success")
            elif pod.outcome in LEFT_BEHIND:
                self._metrics.action("evict", "error")
        now = asyncio.get_running_loop().time()
        if outcome.all_asked_at is not None:
            asked = self._report.seconds_since_notice(notice) - (now - outcome.all_asked_at)
            self._metrics.notice_to_action("evict", max(0.0, asked))
        margin = None if outcome.empty_at is None else deadline - outcome.empty_at
        if not outcome.dry_run:
            # Pods left at the deadline: late by at least the time past it when we stopped.
            if margin is not None:
                self._metrics.deadline_margin(margin)
            else:  # pods left at the deadline: missed, late by at least the time past it
                late = max(0.0, outcome.finished_at - deadline)
                self._metrics.deadline_missed_seconds.observe(late)
                self._alert(notice, missed_by=late)
        fields = {
            "result": outcome.result.value,
            "margin_s": None if margin is None else round(margin, 3),
            "api_requests": outcome.api_requests,
            **counts,
        }
        log = self._report.log(notice)
        self._report.publish(notice, MessagePhase.DRAINED, dry_run=outcome.dry_run, **fields)
        if outcome.result is DrainResult.DRAINED:
            log.info("notice_drained", **fields)
            self._report.event(
                notice,
                Reason.DRAINED,
                f"drained: {counts['evicted']} evicted, {counts['deleted_after_pdb']} deleted "
                f"after PDB refusals, {counts['skipped']} skipped"
                + ("" if margin is None else f", {margin:.1f}s before the deadline"),
            )
        else:
            log.warning("notice_drain_incomplete", error=outcome.error, **fields)
            left = [f"{p.namespace}/{p.name}" for p in outcome.pods if p.outcome in LEFT_BEHIND]
            self._report.event(
                notice,
                Reason.DRAIN_FAILED,
                f"drain {outcome.result.value}: {len(left)} pods left ({', '.join(left[:10])})"
                + (f"; {outcome.error}" if outcome.error else ""),
            )

    def _alert(self, notice: Notice, *, missed_by: float | None) -> None:
        """Tell Alertmanager directly, beside the work (never before it): the agent's metrics
        may vanish with the VM before Prometheus scrapes them."""
        if self._alerts is None:
            return
        alerts = self._alerts

        async def send() -> None:
            if missed_by is None:
                outcome = await alerts.preemption_imminent(
                    notice, cluster=self._cluster, nodepool=self._nodepool or ""
                )
            else:
                outcome = await alerts.deadline_missed(
                    notice, late_s=missed_by, cluster=self._cluster, nodepool=self._nodepool or ""
                )
            self._report.action(notice, "alert", outcome.value, timed=False)

        task = asyncio.create_task(send(), name="direct-alert")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _set_phase(self, notice: Notice, phase: Phase) -> None:
        try:
            await self._node.set_phase(notice.event_id, phase)
        except KubeError as exc:
            # The drain goes on; a restarted agent would redo this step, which is harmless.
            self._report.log(notice).warning(
                "phase_not_recorded", phase=phase.value, error=str(exc)
            )

    # --- acknowledgement -----------------------------------------------------------------------

    async def _acknowledge(self, notice: Notice) -> None:
        log = self._report.log(notice)
        loop = asyncio.get_running_loop()
        give_up = wall_to_loop(notice.deadline, self._clock)
        while True:
            current = self._active.get(notice.event_id)
            if current is None or current.status.value != "scheduled":
                self._report.action(
                    notice, "acknowledge", "skipped", timed=False, reason="event started or gone"
                )
                return
            if await self._may_acknowledge(notice):
                break
            if loop.time() >= give_up:
                self._report.action(
                    notice,
                    "acknowledge",
                    "skipped",
                    timed=False,
                    reason="other listed nodes have not drained",
                )
                return
            log.info("acknowledge_waiting", hint="another VM listed in the event is not drained")
            await asyncio.sleep(ACK_RECHECK_INTERVAL)
        if self._settings.dry_run:
            log.info("dry_run_write", action="acknowledge", verb="post")
            self._report.action(notice, "acknowledge", "skipped", timed=False, reason="dry run")
            return
        try:
            await self._imds.start_events([notice.event_id])
        except ImdsError as exc:
            self._report.action(notice, "acknowledge", "error", error=str(exc))
            return
        self._report.action(notice, "acknowledge", "success")
        self._report.publish(notice, MessagePhase.ACKNOWLEDGED, result="success")
        self._report.event(notice, Reason.ACKNOWLEDGED, "acknowledged (StartRequests) after drain")
        await self._set_phase(notice, Phase.ACKNOWLEDGED)

    async def _may_acknowledge(self, notice: Notice) -> bool:
        if len(notice.resources) == 1:
            return acknowledgement_allowed(notice.resources, self._vm_name, {})
        query = {}
        if self._nodepool:
            # Events come per placement group, so the other VMs are in this node pool.
            query["labelSelector"] = f"kubernetes.azure.com/agentpool={self._nodepool}"
        try:
            nodes = await self._kube.request("GET", "/api/v1/nodes", query=query)
        except KubeError as exc:
            self._report.log(notice).warning("acknowledge_check_failed", error=str(exc))
            return False
        phases: dict[str, Phase | None] = {}
        for item in nodes.get("items") or []:
            state = node_state(item)
            try:
                vm = vm_name_from_provider_id(state.provider_id)
            except IdentityError:
                continue
            phases[vm] = _phase_of(state, notice.event_id)
        return acknowledgement_allowed(notice.resources, self._vm_name, phases)

    # --- clean-up ----------------------------------------------------------------------------

    async def _forget(self, notice: Notice, *, cancelled: bool) -> None:
        log = self._report.log(notice)
        log.info("notice_gone", cancelled=cancelled, status=notice.status.value)
        self._report.publish(
            notice, MessagePhase.ENDED, result="cancelled" if cancelled else "completed"
        )
        if cancelled:
            self._report.event(notice, Reason.CANCELLED, "Azure cancelled the scheduled event")
        if not plan_for(notice, self._settings).touches_node:
            return
        await self._finish(notice)

    async def _finish(self, notice: Notice) -> None:
        try:
            before, after = await self._node.finish(notice.event_id)
        except KubeError as exc:
            self._report.action(notice, "uncordon", "error", timed=False, error=str(exc))
            return
        if before.unschedulable and not after.unschedulable:
            self._report.action(notice, "uncordon", "success", timed=False)
            self._report.event(notice, Reason.UNCORDONED, "uncordoned: no notice remains active")
        elif notice.event_id in before.notices:
            self._report.action(
                notice, "uncordon", "skipped", timed=False, reason=_why_still_cordoned(after)
            )

    async def _reconcile(self, active: set[str]) -> None:
        """Records left on the node by an earlier run for events that are gone by now."""
        try:
            state = await self._node.read()
        except KubeError as exc:
            self._log.warning("reconcile_failed", error=str(exc))
            return
        for event_id, record in state.notices.items():
            if event_id in active:
                continue
            self._log.info("stale_notice_record", event_id=event_id, phase=record.phase.value)
            try:
                await self._node.finish(event_id)
            except KubeError as exc:
                self._log.warning("stale_notice_not_removed", event_id=event_id, error=str(exc))


def _phase_of(state: NodeState | None, event_id: str) -> Phase | None:
    if state is None:
        return None
    record = state.notices.get(event_id)
    return None if record is None else record.phase


def _why_still_cordoned(state: NodeState) -> str:
    if state.notices:
        return "other notices are still active"
    return "cordoned by someone else" if state.unschedulable else "not cordoned"


def _notice_message(notice: Notice) -> str:
    when = rfc3339(notice.not_before) or "now (already started)"
    return (
        f"{notice.kind.value.capitalize()} scheduled by Azure for {when}; spotguard deadline "
        f"{rfc3339(notice.deadline)}. EventId: {notice.event_id}"
    )


def wall_to_loop(moment: datetime, clock: Clock) -> float:
    """A wall-clock moment as an event-loop time (converted once, then only loop time)."""
    return asyncio.get_running_loop().time() + (moment - clock.now()).total_seconds()
