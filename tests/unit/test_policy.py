from datetime import UTC, datetime

import pytest

from spotguard.config import Action, load_settings
from spotguard.engine.policy import acknowledgement_allowed, plan_for
from spotguard.kube.nodes import Phase
from spotguard.model import Kind, Notice, Source, Status

OWN = "aks-spot-12345678-vmss_3"
OTHER = "aks-spot-12345678-vmss_4"
T = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)


def notice(kind: Kind) -> Notice:
    return Notice(
        event_id="e",
        kind=kind,
        status=Status.SCHEDULED,
        node="n",
        vm_name=OWN,
        resources=(OWN,),
        not_before=T,
        deadline=T,
        source=Source.IMDS,
        description="",
        duration_s=-1,
        first_seen=T,
    )


@pytest.mark.parametrize(
    ("kind", "action", "acknowledge", "delete_on_pdb_block"),
    [
        (Kind.PREEMPT, Action.DRAIN, False, True),
        (Kind.TERMINATE, Action.DRAIN, True, False),
        (Kind.REDEPLOY, Action.DRAIN, True, False),
        (Kind.REBOOT, Action.DRAIN, True, False),
        (Kind.FREEZE, Action.RECORD, False, False),
    ],
)
def test_default_plans(
    kind: Kind, action: Action, acknowledge: bool, delete_on_pdb_block: bool
) -> None:
    plan = plan_for(notice(kind), load_settings(None, {}), self_pod=("spotguard", "agent-x"))
    assert (plan.action, plan.acknowledge, plan.drain.delete_on_pdb_block) == (
        action,
        acknowledge,
        delete_on_pdb_block,
    )
    assert plan.drain.self_pod == ("spotguard", "agent-x")
    assert plan.touches_node is (action is not Action.RECORD)


def test_policy_and_dry_run_come_from_settings() -> None:
    settings = load_settings(
        None, {"SPOTGUARD_POLICY__FREEZE__ACTION": "cordon", "SPOTGUARD_DRY_RUN": "true"}
    )
    plan = plan_for(notice(Kind.FREEZE), settings)
    assert plan.action is Action.CORDON
    assert plan.drain.dry_run is True


def test_acknowledge_own_vm_alone() -> None:
    assert acknowledgement_allowed((OWN,), OWN, {})
    assert acknowledgement_allowed((OWN.upper(),), OWN, {})
    assert not acknowledgement_allowed((), OWN, {})


@pytest.mark.parametrize(
    ("phases", "allowed"),
    [
        ({OWN: Phase.DRAINED, OTHER: Phase.DRAINED}, True),
        ({OWN: Phase.DRAINED, OTHER: Phase.ACKNOWLEDGED}, True),
        ({OWN: Phase.DRAINED, OTHER: Phase.DRAINING}, False),
        ({OWN: Phase.DRAINED, OTHER: None}, False),
        ({OWN: Phase.DRAINED}, False),  # the other VM is no node we know
        ({OWN: Phase.FAILED, OTHER: Phase.DRAINED}, False),
    ],
)
def test_acknowledge_several_vms_only_when_all_drained(
    phases: dict[str, Phase | None], allowed: bool
) -> None:
    assert acknowledgement_allowed((OWN, OTHER), OWN, phases) is allowed
