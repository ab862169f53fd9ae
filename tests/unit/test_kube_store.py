"""The object store, fault table and request log of the emulator, without HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from spotguard.sim.kube_errors import ApiError
from spotguard.sim.kube_faults import FaultTable
from spotguard.sim.kube_paths import parse_request
from spotguard.sim.kube_request_log import RequestLog, RequestRecord
from spotguard.sim.kube_resources import Catalogue
from spotguard.sim.kube_store import ObjectStore


class FixedClock:
    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC)


CATALOGUE = Catalogue()
CONFIGMAPS = CATALOGUE.find("", "v1", "configmaps")
assert CONFIGMAPS is not None


def _cm(name: str, **data: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ns"}, "data": data}


def test_every_write_gets_the_next_resource_version_and_one_change() -> None:
    store = ObjectStore(clock=FixedClock())
    a = store.create(CONFIGMAPS, _cm("a"))
    assert a.meta["creationTimestamp"] == "2026-01-01T00:00:00Z"
    assert a.meta["uid"]
    b = store.replace(CONFIGMAPS, a, {**a.obj, "data": {"k": "v"}})
    same = store.replace(CONFIGMAPS, b, {**b.obj})
    assert same is b  # a write that changes nothing is not a write
    gone = store.remove(CONFIGMAPS, b)
    assert [a.rv, b.rv, gone.rv] == [1, 2, 3]
    changes = store.changes_since(0)
    assert changes is not None
    assert [(c.type, c.rv) for c in changes] == [("ADDED", 1), ("MODIFIED", 2), ("DELETED", 3)]
    assert store.changes_since(3) == []
    store.create(CONFIGMAPS, _cm("a"))  # the name is free again
    with pytest.raises(ApiError) as exists:
        store.create(CONFIGMAPS, _cm("a"))
    assert exists.value.code == 409


def test_old_changes_are_compacted() -> None:
    store = ObjectStore(clock=FixedClock(), log_size=3)
    stored = store.create(CONFIGMAPS, _cm("a"))
    for i in range(10):
        stored = store.replace(CONFIGMAPS, stored, {**stored.obj, "data": {"i": str(i)}})
    assert store.changes_since(0) is None  # 410
    recent = store.changes_since(store.resource_version - 2)
    assert recent is not None
    assert [c.rv for c in recent] == [10, 11]


def test_stored_objects_are_listed_in_key_order_and_never_modified() -> None:
    store = ObjectStore(clock=FixedClock())
    given = _cm("b")
    store.create(CONFIGMAPS, given)
    store.create(CONFIGMAPS, {"metadata": {"name": "a", "namespace": "zz"}})
    store.create(CONFIGMAPS, _cm("a"))
    assert "resourceVersion" not in given["metadata"]  # type: ignore[operator]
    assert [(s.namespace, s.name) for s in store.items(CONFIGMAPS)] == [
        ("ns", "a"),
        ("ns", "b"),
        ("zz", "a"),
    ]
    assert [s.name for s in store.items(CONFIGMAPS, "zz")] == ["a"]


def test_faults_match_count_and_expire() -> None:
    faults = FaultTable()
    rule = faults.add(
        {"match": {"verb": "patch", "resource": "nodes"}, "status": 429, "after": 1, "times": 2}
    )
    patch = parse_request("PATCH", "/api/v1/nodes/n", {})
    get = parse_request("GET", "/api/v1/nodes/n", {})
    assert faults.take(get, "ua") is None
    assert [faults.take(patch, "ua") for _ in range(4)] == [None, rule, rule, None]
    with pytest.raises(ValueError, match="needs a status"):
        faults.add({"match": {}})
    with pytest.raises(ValueError, match="match may use only"):
        faults.add({"match": {"colour": "red"}, "status": 500})
    agent_only = faults.add({"match": {"user_agent": "spotguard"}, "drop": True})
    assert faults.take(get, "kubectl/v1.37.1") is None
    assert faults.take(get, "spotguard/0.1.0") is agent_only


def test_request_log_keeps_the_newest_entries() -> None:
    log = RequestLog(size=5)
    for _ in range(12):
        seq = log.allocate()
        log.append(
            RequestRecord(
                seq=seq,
                at="",
                t=0.0,
                method="GET",
                path="/",
                verb="get",
                resource_request=False,
                group="",
                version="",
                resource=None,
                subresource=None,
                namespace=None,
                name=None,
                status=200,
                content_type=None,
                user_agent="",
                fault=None,
                duration_ms=0.0,
            )
        )
    assert len(log) <= 10
    assert [r.seq for r in log.since(9)] == [10, 11, 12]
    assert log.next_seq == 13
