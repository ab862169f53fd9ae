"""Policy: what spotguard does for a notice, decided apart from how it is done.

Pure functions over settings, notices and what the cluster records; the responder carries out
what they decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spotguard.config import Action, Settings
from spotguard.kube.nodes import Phase
from spotguard.kube.pods import DrainOptions
from spotguard.model import Notice
from spotguard.sources.identity import same_name

#: Phases after which a node has nothing left to move for a notice.
DRAINED_PHASES = frozenset({Phase.DRAINED, Phase.ACKNOWLEDGED})


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    acknowledge: bool
    drain: DrainOptions

    @property
    def touches_node(self) -> bool:
        return self.action is not Action.RECORD


def plan_for(
    notice: Notice, settings: Settings, *, self_pod: tuple[str, str] | None = None
) -> Plan:
    policy = settings.policy[notice.kind]
    return Plan(
        action=policy.action,
        acknowledge=policy.acknowledge,
        drain=DrainOptions(
            delete_on_pdb_block=policy.delete_on_pdb_block,
            self_pod=self_pod,
            dry_run=settings.dry_run,
            stop_budget=settings.stop_budget,
        ),
    )


def acknowledgement_allowed(
    resources: tuple[str, ...], own_vm: str, phases: Mapping[str, Phase | None]
) -> bool:
    """May this agent POST StartRequests for an event listing ``resources``?

    Acknowledging lets the event start for every VM it lists, so only when this VM is the only
    one listed, or when every listed VM's node records the event as drained. ``phases`` maps a
    listed VM name to the phase its node records (None: no node, or no record — not drained).
    """
    if not resources:
        return False
    if all(same_name(r, own_vm) for r in resources):
        return True
    for vm in resources:
        phase = next((p for name, p in phases.items() if same_name(name, vm)), None)
        if phase not in DRAINED_PHASES:
            return False
    return True
