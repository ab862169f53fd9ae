"""What happens on each node of the real stack, from the notice to the notification.

Every scenario has its own node and agent, and they all run at once (as a pool losing several
VMs would), so the package costs the longest scenario, not their sum. A scenario drives and
waits, and returns what it saw (``Outcome``); the tests assert on it.

The VM is killed (SIGKILL, no goodbye) at its ``NotBefore``, as Azure takes it. Each notice is
timed against the agent's scrapes, which Prometheus runs at a fixed phase every 5 s: the notice
is injected right after a scrape, and ``NotBefore`` (whole seconds, as IMDS has it) is chosen so
the scrapes that see the notice, and what they see, are known in advance — "killed right after
one scrape" means exactly one scrape saw the notice. Without that, the same test would check a
different alert from run to run.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from spotguard.sources.imds_document import format_not_before
from tests.e2e.agent_harness import SAFETY_MARGIN, node_name, not_before, vm_name
from tests.stack.servers import Notification, parse_go_time, wait_until
from tests.stack.stack import (
    BYSTANDER,
    DIRECT,
    GROUP_INTERVAL,
    MISSED,
    NAMESPACE,
    RULE_ONLY,
    SCRAPE_INTERVAL,
    STUCK_POD,
    UNCONFIRMED,
    Stack,
)

#: From the kill to a rule alert's notification: the failed scrape or the next one (5 s), an
#: evaluation of the node group (every 15 s), Alertmanager's group_wait (1 s), with a margin
#: for a loaded CI machine.
ALERT_TIMEOUT = 45.0
NODE_GROUP = "spotguard-node"
#: How long the bystander's IMDS answers 500: long enough for an evaluation (every 15 s) to see
#: the agent blind (after 2 s of silence) whatever the phase.
BLIND_FOR = 25.0


@dataclass(frozen=True)
class Notice:
    """A Preempt injected for one VM, and when things happen around it (wall clock)."""

    event_id: str
    injected_at: float
    #: the scrape right before the injection (the agent's counters still at zero)
    scrape_before: float
    #: the scrape planned to be the last one of the agent alive
    last_scrape: float
    not_before: float

    @property
    def deadline(self) -> float:
        """The agent's deadline: NotBefore - safety margin (default 2 s)."""
        return self.not_before - SAFETY_MARGIN


@dataclass
class Outcome:
    node: str
    notice: Notice | None = None
    killed_at: float | None = None
    #: notifications about the node, as the scenario ended
    notifications: list[Notification] = field(default_factory=list)
    #: seconds from the injection of the notice
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def mark(self, name: str, at: float | None = None) -> None:
        assert self.notice is not None
        self.timings[name] = round((at or time.time()) - self.notice.injected_at, 2)

    def report(self) -> str:
        steps = ", ".join(f"{k} +{v:.2f}s" for k, v in self.timings.items())
        return f"{self.node}: {steps}"


# --- building blocks --------------------------------------------------------------------------


async def preempt_between_scrapes(
    stack: Stack, index: int, *, scrapes: int, offset: float
) -> Notice:
    """A Preempt for agent ``index``'s VM, injected right after one of its scrapes, with
    ``NotBefore`` in ``[s + offset, s + offset + 1)`` where ``s`` is the ``scrapes``-th scrape
    after the injection (the one planned to be the last)."""
    scrape_before = await stack.next_scrape(index)
    last_scrape = scrape_before + scrapes * SCRAPE_INTERVAL
    planned = math.ceil(last_scrape + offset)
    injected_at = time.time()
    # The simulator rounds NotBefore up to a whole second: aim half a second short of it.
    event = await stack.imds.inject(
        "Preempt", resources=[vm_name(index)], not_before_in=planned - injected_at - 0.5
    )
    assert not_before(event) == planned, (event, planned)
    return Notice(
        event_id=str(event["event_id"]),
        injected_at=injected_at,
        scrape_before=scrape_before,
        last_scrape=last_scrape,
        not_before=planned,
    )


async def kill_vm(stack: Stack, index: int, notice: Notice) -> float:
    """SIGKILL the agent at ``NotBefore`` — once the scrape planned before it has happened
    (should Prometheus be late, the VM goes a little later rather than the test checking
    something else). Returns the kill time."""
    await asyncio.sleep(max(0.0, notice.not_before - time.time()))
    last, _ = await stack.last_scrape(index)
    if last is None or last < notice.last_scrape - 0.5:
        await stack.next_scrape(index, after=notice.last_scrape - 0.5)
    killed_at = time.time()
    await stack.agent(index).kill()
    return killed_at


async def alerts_once_gone(stack: Stack, index: int, killed_at: float) -> list[dict[str, Any]]:
    """Prometheus's alerts about the node once its agent is gone: after the first failed scrape
    (which marks its series stale) and the next evaluation of the node rules."""
    failed = await stack.next_scrape(index, after=killed_at)

    async def evaluated() -> bool:
        for group in await stack.prometheus.rule_groups():
            if group["name"] == NODE_GROUP and not group["lastEvaluation"].startswith("0001-"):
                return parse_go_time(group["lastEvaluation"]) > failed + 0.01
        return False

    await wait_until(evaluated, timeout=30, what="an evaluation of the node rules", interval=0.2)
    node = node_name(index)
    alerts = [a for a in await stack.prometheus.alerts() if a["labels"].get("node") == node]
    if any(a["labels"].get("alertname") == "SpotguardAgentAbsent" for a in alerts):
        # Not expected for a node spotguard tainted: keep what the rule read, for the failure.
        for series in ("kube_node_spec_taint", "kube_node_labels", "spotguard_build_info"):
            found = await stack.prometheus.query(f'{series}{{node="{node}"}}[1m]')
            print(f"{series} over the last minute: {found}")
        print(f"alerts: {alerts}")
    return alerts


async def notification(
    stack: Stack, index: int, *, receiver: str, alertname: str, timeout: float = ALERT_TIMEOUT
) -> Notification:
    """The first notification to ``receiver`` about the node that carries ``alertname``."""
    node = node_name(index)

    def arrived() -> Notification | None:
        for sent in stack.receiver.about(node, receiver):
            if alertname in sent.alertnames:
                return sent
        return None

    return await wait_until(
        arrived, timeout=timeout, what=f"{alertname} for {node} at {receiver}", interval=0.05
    )


async def scenario(stack: Stack, index: int, body: Callable[[Outcome], Awaitable[None]]) -> Outcome:
    """Run ``body``; a failure carries the agent's log tail and what reached the receiver."""
    outcome = Outcome(node=node_name(index))
    try:
        await body(outcome)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await stack.diagnostics(index)}") from None
    outcome.notifications = stack.receiver.about(outcome.node)
    return outcome


def selector(index: int, **labels: str) -> str:
    pairs = {"node": node_name(index), **labels}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in pairs.items()) + "}"


# --- the scenarios -----------------------------------------------------------------------------


async def rule_only(stack: Stack) -> Outcome:
    """Direct alerts off. The node drains in well under a second; the one scrape that sees the
    notice sees the drain's outcome too, and the VM goes right after it. The rule alert
    (SpotguardPreemptionImminent, info) must still reach the team channel."""
    i = RULE_ONLY

    async def body(out: Outcome) -> None:
        out.notice = notice = await preempt_between_scrapes(stack, i, scrapes=1, offset=0.3)
        out.killed_at = await kill_vm(stack, i, notice)
        out.mark("killed", out.killed_at)
        sent = await notification(
            stack, i, receiver="team-channel", alertname="SpotguardPreemptionImminent"
        )
        out.mark("rule alert notified", sent.at)
        out.facts["notices"] = await stack.samples(
            "spotguard_notices_total" + selector(i, kind="preempt", source="imds")
        )
        out.facts["drained"] = await stack.samples(
            "spotguard_drains_total" + selector(i, kind="preempt", outcome="drained")
        )
        out.facts["alerts_once_gone"] = await alerts_once_gone(stack, i, out.killed_at)

    return await scenario(stack, i, body)


async def direct_and_rule(stack: Stack) -> Outcome:
    """SPOTGUARD_ALERTMANAGER_URL set: the agent's own SpotguardPreemptionImminent reaches
    Alertmanager at once, the rule alert of the same name and labels later (after the one scrape
    that sees the notice and an evaluation). One notification, not two."""
    i = DIRECT
    node = node_name(i)

    async def body(out: Outcome) -> None:
        out.notice = notice = await preempt_between_scrapes(stack, i, scrapes=1, offset=0.3)
        first = await notification(
            stack, i, receiver="team-channel", alertname="SpotguardPreemptionImminent"
        )
        out.mark("direct alert notified", first.at)
        out.killed_at = await kill_vm(stack, i, notice)
        out.mark("killed", out.killed_at)

        async def merged() -> list[dict[str, Any]] | None:
            # Alertmanager keeps the younger alert's fields: the rule's generatorURL once
            # Prometheus has sent it.
            alerts = await stack.alertmanager.alerts(node=node)
            return alerts if any("/graph" in a.get("generatorURL", "") for a in alerts) else None

        out.facts["alertmanager_alerts"] = await wait_until(
            merged, timeout=ALERT_TIMEOUT, what=f"the rule alert for {node} in Alertmanager"
        )
        out.mark("rule alert in Alertmanager")
        # Alertmanager flushes the group every group_interval: three chances to notify again.
        await asyncio.sleep(3 * GROUP_INTERVAL + 1)
        out.facts["notices"] = await stack.samples(
            "spotguard_notices_total" + selector(i, kind="preempt", source="imds")
        )
        out.facts["prometheus_alerts"] = [
            a for a in await stack.prometheus.alerts() if a["labels"].get("node") == node
        ]

    return await scenario(stack, i, body)


async def missed_deadline(stack: Stack) -> Outcome:
    """A pod whose PodDisruptionBudget never allows its eviction, and a policy that does not
    delete it: the drain leaves it behind and reports the deadline missed (the other pods, a
    checkpointing pipeline step among them, do leave). The agent's direct alerts cannot reach
    Alertmanager. The report is scraped before NotBefore (the planned last scrape is after the
    deadline), and SpotguardDeadlineMissed must page on-call."""
    i = MISSED

    async def body(out: Outcome) -> None:
        # Long enough for the step's checkpoint (deadline - 3 s stop budget): two scrapes see
        # the notice, the second one after the deadline.
        out.notice = notice = await preempt_between_scrapes(stack, i, scrapes=2, offset=0.3)
        await stack.next_scrape(i, after=notice.last_scrape - 0.5)
        code, out.facts["exposition"] = await stack.agent(i).get("/metrics")
        assert code == 200
        out.killed_at = await kill_vm(stack, i, notice)
        out.mark("deadline", notice.deadline)
        out.mark("killed", out.killed_at)
        page = await notification(stack, i, receiver="oncall", alertname="SpotguardDeadlineMissed")
        out.mark("page notified", page.at)
        for name, expr in {
            "missed": "spotguard_deadline_missed_seconds_count" + selector(i),
            "partial": "spotguard_drains_total" + selector(i, kind="preempt", outcome="partial"),
            "alert_errors": "spotguard_actions_total"
            + selector(i, action="alert", outcome="error"),
            "checkpoints_saved": "spotguard_actions_total"
            + selector(i, action="checkpoint", outcome="success"),
        }.items():
            out.facts[name] = await stack.samples(expr)
        out.facts["checkpoint_requests"] = list(stack.step.requests)
        out.facts["alerts_once_gone"] = await alerts_once_gone(stack, i, out.killed_at)

    return await scenario(stack, i, body)


async def drain_unconfirmed(stack: Stack) -> Outcome:
    """The drain cannot finish (the API server answers the evictions of the node's pod with
    503), gives up at the deadline, and the VM goes 2 s later at NotBefore, before any scrape saw
    how the drain ended — the case dashboards/alerts/README.md describes.
    SpotguardDrainUnconfirmed must page on-call."""
    i = UNCONFIRMED

    async def body(out: Outcome) -> None:
        await stack.cluster.add_fault(
            match={"verb": "create", "resource": "pods", "subresource": "eviction"}
            | {"namespace": NAMESPACE, "name": STUCK_POD},
            status=503,
            message="the API server is overloaded",
        )
        # The deadline falls 0.7-1.7 s after the one scrape that sees the notice, NotBefore
        # 1.3-2.3 s before the next one.
        out.notice = notice = await preempt_between_scrapes(stack, i, scrapes=1, offset=2.7)
        out.killed_at = await kill_vm(stack, i, notice)
        out.mark("deadline", notice.deadline)
        out.mark("killed", out.killed_at)
        page = await notification(
            stack, i, receiver="oncall", alertname="SpotguardDrainUnconfirmed"
        )
        out.mark("page notified", page.at)
        out.facts["incomplete"] = stack.agent(i).events("notice_drain_incomplete")
        out.facts["notices"] = await stack.samples(
            "spotguard_notices_total" + selector(i, kind="preempt", source="imds")
        )
        out.facts["drains_seen"] = await stack.prometheus.value(
            f"max(max_over_time(spotguard_drains_total{selector(i)}[3m]))"
        )

    return await scenario(stack, i, body)


async def imds_outage(stack: Stack) -> Outcome:
    """No notice: the bystander's IMDS answers 500 for 25 s (it turns blind after 2 s), then one
    document with an entry the agent cannot read. The agent lives on (its series are the live
    ones the dashboard's "now" panels need)."""
    i = BYSTANDER
    vm = vm_name(i)
    bogus = {
        "EventId": "5A5A5A5A-0000-4000-8000-00000000BEEF",
        "EventType": "Teleport",
        "ResourceType": "VirtualMachine",
        "Resources": [vm],
        "EventStatus": "Scheduled",
        "NotBefore": format_not_before(datetime.now(UTC) + timedelta(minutes=5)),
        "Description": "not an event type IMDS has",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }
    document = json.dumps({"DocumentIncarnation": 7, "Events": [bogus]})

    async def body(out: Outcome) -> None:
        started = time.time()
        await stack.imds.add_fault(kind="status", status=500, seconds=BLIND_FOR, vm=vm)
        await stack.imds.add_fault(kind="body", body=document, count=1, vm=vm)

        async def value(expr: str) -> float | None:
            return await stack.prometheus.value(expr)

        await wait_until(
            lambda: value(f"max_over_time(spotguard_imds_blind{selector(i)}[5m]) == 1"),
            timeout=BLIND_FOR,
            what="a scrape of the blind agent",
        )
        out.facts["blind_after"] = round(time.time() - started, 2)

        async def pending() -> list[dict[str, Any]]:
            # Prometheus's own alert state: the ALERTS series is not written during a group's
            # first evaluations after start-up (until its `for` state is restored).
            return [
                a
                for a in await stack.prometheus.alerts()
                if a["labels"].get("alertname") == "SpotguardImdsBlind"
                and a["labels"].get("node") == node_name(i)
            ]

        out.facts["blind_alert"] = await wait_until(
            pending, timeout=BLIND_FOR + 20, what="SpotguardImdsBlind to go pending", interval=0.2
        )
        out.facts["pending_after"] = round(time.time() - started, 2)

        async def recovered() -> bool:
            blind = await value(f"spotguard_imds_blind{selector(i)}")
            invalid = await value(f"spotguard_imds_invalid_events_total{selector(i)}")
            return blind == 0 and (invalid or 0) >= 1

        await wait_until(recovered, timeout=BLIND_FOR + 20, what="the agent to recover")
        out.facts["recovered_after"] = round(time.time() - started, 2)
        out.facts["errors"] = await value(
            f"sum(spotguard_imds_requests_total{selector(i, outcome='http_5xx')})"
        )
        await stack.agent(i).wait_ready(10)

    return await scenario(stack, i, body)


SCENARIOS: dict[str, Callable[[Stack], Awaitable[Outcome]]] = {
    "rule_only": rule_only,
    "direct_and_rule": direct_and_rule,
    "missed_deadline": missed_deadline,
    "drain_unconfirmed": drain_unconfirmed,
    "imds_outage": imds_outage,
}
