from datetime import UTC, datetime, timedelta

from spotguard.engine.store import NoticeStore
from spotguard.model import (
    ChangeType,
    Kind,
    RejectedEvent,
    ScheduledEvent,
    ScheduledEventsDocument,
    Status,
)

VM = "aks-spot-12345678-vmss_3"
T0 = datetime(2026, 11, 28, 14, 0, 0, tzinfo=UTC)


def event(
    event_id: str = "e1",
    *,
    kind: Kind = Kind.PREEMPT,
    status: Status = Status.SCHEDULED,
    resources: tuple[str, ...] = (VM,),
    not_before: datetime | None = T0 + timedelta(seconds=30),
) -> ScheduledEvent:
    return ScheduledEvent(
        event_id=event_id,
        event_type=kind.value.capitalize(),
        kind=kind,
        resource_type="VirtualMachine",
        resources=resources,
        status=status,
        not_before=not_before if status is Status.SCHEDULED else None,
        description="",
        event_source="Platform",
        duration_s=-1,
    )


def doc(incarnation: int, *events: ScheduledEvent, rejected: tuple[RejectedEvent, ...] = ()):
    return ScheduledEventsDocument(incarnation, tuple(events), rejected)


def store() -> NoticeStore:
    return NoticeStore(vm_name=VM, node="aks-spot-12345678-vmss000003", safety_margin=2.0)


def test_new_notice_has_deadline_not_before_minus_margin() -> None:
    s = store()
    (change,) = s.apply(doc(1, event()), T0)
    assert change.change is ChangeType.NEW
    assert change.notice.deadline == T0 + timedelta(seconds=28)
    assert change.notice.node == "aks-spot-12345678-vmss000003"
    assert change.notice.first_seen == T0
    assert set(s.active) == {"e1"}


def test_unchanged_incarnation_is_skipped() -> None:
    s = store()
    s.apply(doc(1, event()), T0)
    # Same incarnation means same content, whatever we are handed.
    assert s.apply(doc(1), T0 + timedelta(seconds=1)) == []
    assert set(s.active) == {"e1"}


def test_other_vms_are_ignored_and_resources_compare_case_insensitively() -> None:
    s = store()
    changes = s.apply(
        doc(
            1,
            event("theirs", resources=("aks-spot-12345678-vmss_4",)),
            event("ours", resources=("FrontEnd_IN_0", VM.upper())),
        ),
        T0,
    )
    assert [c.notice.event_id for c in changes] == ["ours"]


def test_started_then_gone_is_completion() -> None:
    s = store()
    s.apply(doc(1, event()), T0)
    later = T0 + timedelta(seconds=5)
    (updated,) = s.apply(doc(2, event(status=Status.STARTED)), later)
    assert updated.change is ChangeType.UPDATED
    assert updated.notice.status is Status.STARTED
    assert updated.notice.not_before is None
    assert updated.notice.deadline == later  # it is happening now
    assert updated.notice.first_seen == T0
    assert updated.previous is not None
    assert updated.previous.status is Status.SCHEDULED
    (gone,) = s.apply(doc(3), later + timedelta(seconds=1))
    assert (gone.change, gone.cancelled, gone.notice.status) == (
        ChangeType.GONE,
        False,
        Status.STARTED,
    )
    assert s.active == {}


def test_vanished_while_scheduled_is_cancellation() -> None:
    s = store()
    s.apply(doc(1, event(kind=Kind.REBOOT)), T0)
    (gone,) = s.apply(doc(2), T0 + timedelta(seconds=3))
    assert gone.change is ChangeType.GONE
    assert gone.cancelled is True
    assert gone.notice.status is Status.CANCELLED


def test_first_seen_already_started_acts_at_once() -> None:
    (change,) = store().apply(doc(1, event(status=Status.STARTED)), T0)
    assert change.notice.deadline == T0


def test_not_before_moved_is_an_update() -> None:
    s = store()
    s.apply(doc(1, event()), T0)
    (change,) = s.apply(doc(2, event(not_before=T0 + timedelta(seconds=60))), T0)
    assert change.change is ChangeType.UPDATED
    assert change.notice.deadline == T0 + timedelta(seconds=58)


def test_two_notices_at_once() -> None:
    s = store()
    changes = s.apply(doc(1, event("a"), event("b", kind=Kind.REBOOT)), T0)
    assert sorted(c.notice.event_id for c in changes) == ["a", "b"]
    (gone,) = s.apply(doc(2, event("b", kind=Kind.REBOOT)), T0)
    assert gone.notice.event_id == "a"
    assert set(s.active) == {"b"}


def test_unreadable_entry_is_not_taken_for_a_cancellation() -> None:
    s = store()
    s.apply(doc(1, event("a")), T0)
    assert s.apply(doc(2, rejected=(RejectedEvent("a", "unknown EventType"),)), T0) == []
    assert set(s.active) == {"a"}
    # An entry without a readable id could be any of ours: nothing is taken as gone.
    assert s.apply(doc(3, rejected=(RejectedEvent(None, "event is a str"),)), T0) == []
    assert set(s.active) == {"a"}
    (gone,) = s.apply(doc(4), T0)
    assert gone.cancelled


def test_event_that_stops_listing_us_is_gone() -> None:
    s = store()
    s.apply(doc(1, event("a")), T0)
    (gone,) = s.apply(doc(2, event("a", resources=("someone-else_1",))), T0)
    assert gone.change is ChangeType.GONE


def test_vanished_after_not_before_completed_unseen() -> None:
    # Started for less than a poll interval: we only ever saw it Scheduled.
    s = store()
    s.apply(doc(1, event()), T0)
    (gone,) = s.apply(doc(2), T0 + timedelta(seconds=31))
    assert gone.change is ChangeType.GONE
    assert gone.cancelled is False
    assert gone.notice.status is Status.SCHEDULED
