"""Checkpoint storage in process: layout, metadata, retention, torn data, concurrent writers.

Every test runs on the local backend and on Azurite (``new_location``'s params)."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import pytest

from spotguard.step import (
    CheckpointStore,
    ConcurrentWriter,
    SettingError,
    StaleWriter,
    open_store,
)
from spotguard.step.checkpoint import POINTER, data_name, manifest_name
from spotguard.step.store import BlobStore, FsspecStore, LocalStore, Store
from tests.step.conftest import LocationFactory


def test_round_trip_bytes_and_json_with_metadata(new_location: LocationFactory) -> None:
    loc = new_location()
    ckpts = loc.store(run_id="run-1", step="concat", retry_index=2)
    assert ckpts.restore() is None

    first = ckpts.save(b"\x00raw\xffbytes", progress=1)
    assert first.seq == 1
    assert first.size == 10
    assert first.location.endswith(data_name(1))
    restored = ckpts.restore()
    assert restored is not None
    assert restored.state == b"\x00raw\xffbytes"

    ckpts.save({"rows": 3, "names": ["a", "ü"]}, progress={"files": 2})
    restored = loc.store().restore()  # another process would see the same
    assert restored is not None
    assert restored.state == {"rows": 3, "names": ["a", "ü"]}
    assert restored.progress == {"files": 2}
    meta = restored.meta
    assert meta["run_id"] == "run-1"
    assert meta["step"] == "concat"
    assert meta["retry_index"] == 2
    assert meta["seq"] == 2
    assert meta["bytes"] == len(restored.data)
    assert meta["sha256"] == hashlib.sha256(restored.data).hexdigest()
    assert meta["created"].endswith("Z")
    assert meta["encoding"] == "json"


def test_keeps_the_last_n(new_location: LocationFactory) -> None:
    loc = new_location()
    ckpts = loc.store(keep=2)
    for i in range(1, 6):
        ckpts.save(f"state {i}".encode(), progress=i)
    names = sorted(ckpts.store.names())
    assert names == sorted(
        [data_name(4), manifest_name(4), data_name(5), manifest_name(5), POINTER]
    )
    restored = ckpts.restore()
    assert restored is not None
    assert restored.progress == 5


def test_a_torn_or_tampered_checkpoint_is_never_restored(new_location: LocationFactory) -> None:
    loc = new_location()
    ckpts = loc.store(keep=5)
    for i in range(1, 4):
        ckpts.save(f"state {i}".encode() * 100, progress=i)
    store = ckpts.store

    # Same size, one byte changed: only the hash can tell.
    good = store.read(data_name(3))
    assert good is not None
    store.delete(data_name(3))
    store.create(data_name(3), good[:-1] + b"X")
    restored = ckpts.restore()
    assert restored is not None
    assert restored.progress == 2

    # Truncated data.
    store.delete(data_name(2))
    store.create(data_name(2), b"state 2")
    restored = ckpts.restore()
    assert restored is not None
    assert restored.progress == 1

    # A manifest that is not JSON, and a pointer that is not JSON.
    store.delete(manifest_name(1))
    store.create(manifest_name(1), b"{not json")
    tagged = store.read_tagged(POINTER)
    assert tagged is not None
    store.swap(POINTER, b"\x00garbage", tagged[1])
    assert ckpts.restore() is None

    # The next save still works and becomes the latest.
    saved = ckpts.save(b"fresh", progress=9)
    assert saved.seq == 4
    restored = ckpts.restore()
    assert restored is not None
    assert (restored.data, restored.progress) == (b"fresh", 9)


def test_left_overs_of_a_killed_writer_are_skipped_and_cleaned(
    new_location: LocationFactory,
) -> None:
    loc = new_location()
    ckpts = loc.store(keep=1)
    ckpts.save(b"one", progress=1)
    # A writer killed after its data (seq 2) and one killed after its manifest (seq 3).
    ckpts.store.create(data_name(2), b"orphan")
    ckpts.store.create(data_name(3), b"uncommitted")
    ckpts.store.create(
        manifest_name(3),
        json.dumps({"v": 1, "seq": 3, "bytes": 11, "sha256": "0" * 64}).encode(),
    )
    restored = ckpts.restore()
    assert restored is not None
    assert restored.progress == 1  # the pointer is the commit

    saved = ckpts.save(b"two", progress=2)
    assert saved.seq == 4  # numbers in use are skipped, nothing is overwritten
    assert sorted(ckpts.store.names()) == sorted([data_name(4), manifest_name(4), POINTER])


def test_two_writers_never_clobber_the_pointer(new_location: LocationFactory) -> None:
    loc = new_location()
    a = loc.store(retry_index=0)
    b = loc.store(retry_index=0)
    a.save(b"a1", progress=1)

    # Writer B commits while A is between writing its data and moving the pointer.
    a_store = _Paused(a.store, before_swap=lambda: b.save(b"b2", progress=2))
    a.store = a_store
    with pytest.raises(ConcurrentWriter):
        a.save(b"a-late", progress=3)
    restored = loc.store().restore()
    assert restored is not None
    assert (restored.data, restored.progress) == (b"b2", 2)

    # C took its number after D, and D commits while C is about to: C's compare-and-swap fails,
    # but C holds the higher number, so it still moves the pointer forward, over D's.
    d = loc.store()
    d_paused, d_go = threading.Event(), threading.Event()

    def hold_d() -> None:
        d_paused.set()
        assert d_go.wait(10)

    d.store = _Paused(d.store, before_swap=hold_d)
    d_result: list[int] = []
    d_thread = threading.Thread(target=lambda: d_result.append(d.save(b"d", progress=4).seq))
    d_thread.start()
    assert d_paused.wait(10)

    def let_d_commit() -> None:
        d_go.set()
        d_thread.join(10)

    c = loc.store()
    c.store = _Paused(c.store, before_swap=let_d_commit)
    c_seq = c.save(b"c", progress=5).seq
    assert c_seq > d_result[0]
    restored = loc.store().restore()
    assert restored is not None
    assert (restored.seq, restored.data) == (c_seq, b"c")


def test_threads_racing_on_one_location(new_location: LocationFactory) -> None:
    loc = new_location()
    committed: list[int] = []
    lost: list[BaseException] = []

    def writer(name: str) -> None:
        ckpts = loc.store(keep=50)
        for i in range(8):
            try:
                committed.append(ckpts.save(f"{name}-{i}".encode(), progress=i).seq)
            except ConcurrentWriter as exc:
                lost.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(committed) + len(lost) == 24
    assert len(set(committed)) == len(committed), "two saves committed the same number"
    restored = loc.store().restore()
    assert restored is not None
    assert restored.seq == max(committed)


def test_an_older_retry_cannot_write_over_a_newer_one(new_location: LocationFactory) -> None:
    loc = new_location()
    loc.store(retry_index=1).save(b"retry 1", progress=5)
    old = loc.store(retry_index=0)
    before = sorted(old.store.names())
    with pytest.raises(StaleWriter):
        old.save(b"zombie", progress=9)
    assert sorted(old.store.names()) == before
    restored = loc.store(retry_index=2).restore()
    assert restored is not None
    assert restored.data == b"retry 1"


def test_state_that_cannot_be_encoded_writes_nothing(new_location: LocationFactory) -> None:
    loc = new_location()
    ckpts = loc.store()
    with pytest.raises(TypeError):
        ckpts.save({"a set": {1, 2}})
    with pytest.raises(ValueError, match="Out of range"):
        ckpts.save(b"ok", progress=float("nan"))
    assert ckpts.store.names() == []


def test_fsspec_backend_for_other_protocols() -> None:
    store = open_store("memory://spotguard-tests/run/step")
    assert isinstance(store, FsspecStore)
    ckpts = CheckpointStore(store, keep=2)
    for i in range(4):
        ckpts.save({"i": i}, progress=i)
    restored = CheckpointStore(open_store("memory://spotguard-tests/run/step")).restore()
    assert restored is not None
    assert restored.state == {"i": 3}
    assert len([n for n in store.names() if n.endswith(".bin")]) == 2


def test_location_forms(tmp_path: Any) -> None:
    assert isinstance(open_store(str(tmp_path / "a")), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}/b"), LocalStore)
    assert (tmp_path / "b").is_dir()
    with pytest.raises(SettingError, match="names no host"):
        open_store("file://elsewhere/x")
    with pytest.raises(SettingError, match="DefaultAzureCredential is never used"):
        BlobStore.from_url("abfs://ckpt@acct.dfs.core.windows.net/run", environ={})
    with pytest.raises(SettingError, match="no storage account"):
        BlobStore.from_url("abfs://ckpt/run", environ={})
    with pytest.raises(SettingError, match="no container"):
        BlobStore.from_url("az:///run", environ={})
    # The account comes from the URL; nothing is contacted when the client is made.
    store = BlobStore.from_url(
        "abfss://ckpt@acct.dfs.core.windows.net/run/step",
        environ={"AZURE_STORAGE_SAS_TOKEN": "sv=2024&sig=x"},
    )
    assert (
        store.locate("latest.json") == "abfss://ckpt@acct.dfs.core.windows.net/run/step/latest.json"
    )
    store.close()


class _Paused:
    """A store that runs ``before_swap`` once, just before the first pointer swap."""

    def __init__(self, inner: Store, before_swap: Any) -> None:
        self._inner = inner
        self._before_swap = before_swap
        self.url = inner.url

    def swap(self, name: str, data: bytes, tag: str | None) -> None:
        hook, self._before_swap = self._before_swap, None
        if hook is not None:
            hook()
        self._inner.swap(name, data, tag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
