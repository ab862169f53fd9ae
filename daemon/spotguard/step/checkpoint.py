"""Saving and restoring a step's checkpoints: layout, atomic commit, verification, retention.

Layout of one step's checkpoint folder (a local path or a blob prefix)::

    ckpt-000000000007.bin    the state, exactly as saved
    ckpt-000000000007.json   its manifest: sha256, size, run id, step, retry index, progress, ...
    latest.json              the pointer: which sequence number is the latest good checkpoint

A save writes the data and the manifest under a new sequence number with create-only writes,
then moves the pointer forward with a compare-and-swap (``If-Match`` on Blob, a compare under
``flock`` locally). The pointer write is the commit: a writer killed before it leaves at most
objects that nothing points to, and the next save's clean-up removes them. Restore follows the
pointer and checks the data against the manifest's size and sha256; if that fails (or there is
no pointer) it falls back to the newest manifest whose data checks out, so a torn or tampered
checkpoint is never returned.

Two writers at one location (a retry started while the old pod still runs) never clobber each
other: the pointer only moves forward, a writer that lost the race gets ConcurrentWriter, and a
writer of an earlier retry than the one recorded in the pointer gets StaleWriter before it writes
anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from spotguard.step.errors import (
    AlreadyExists,
    CheckpointError,
    ConcurrentWriter,
    ConditionFailed,
    StaleWriter,
    StoreError,
)
from spotguard.step.store import Store

log = logging.getLogger("spotguard.step")

POINTER = "latest.json"
_MANIFEST = re.compile(r"^ckpt-(\d{12})\.json$")
_DATA = re.compile(r"^ckpt-(\d{12})\.bin$")
#: attempts to find a free sequence number / to move the pointer before giving up
_MAX_ATTEMPTS = 16
#: how many manifests restore tries when the pointer is missing or its checkpoint is bad
_MAX_FALLBACK = 32


def data_name(seq: int) -> str:
    return f"ckpt-{seq:012d}.bin"


def manifest_name(seq: int) -> str:
    return f"ckpt-{seq:012d}.json"


@dataclass(frozen=True)
class Checkpoint:
    """A restored checkpoint: the bytes as saved and their manifest."""

    data: bytes
    meta: Mapping[str, Any]
    location: str

    @property
    def seq(self) -> int:
        return int(self.meta["seq"])

    @property
    def progress(self) -> Any:
        """What the saver passed as ``progress`` (any JSON value; None if it passed nothing)."""
        return self.meta.get("progress")

    @property
    def state(self) -> Any:
        """The state as it was given to ``save``: bytes, or the decoded JSON value."""
        if self.meta.get("encoding") == "json":
            return json.loads(self.data)
        return self.data


@dataclass(frozen=True)
class Saved:
    """A committed checkpoint."""

    location: str
    size: int
    seq: int
    sha256: str
    progress: Any = None
    meta: Mapping[str, Any] = field(default_factory=dict)


def encode_state(state: object) -> tuple[bytes, str]:
    """``state`` (bytes-like, a JSON value, or a zero-argument callable returning one) as bytes."""
    if callable(state):
        state = state()
    if isinstance(state, bytes | bytearray | memoryview):
        return bytes(state), "bytes"
    try:
        text = json.dumps(state, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"checkpoint state must be bytes or JSON-serialisable, "
            f"not {type(state).__name__}: {exc}"
        ) from exc
    return text.encode(), "json"


class CheckpointStore:
    """Checkpoints of one step at one location. Thread-safe; one instance per process is enough."""

    def __init__(
        self,
        store: Store,
        *,
        run_id: str = "",
        step: str = "",
        retry_index: int = 0,
        keep: int = 3,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.store = store
        self.run_id = run_id
        self.step = step
        self.retry_index = retry_index
        self.keep = keep
        self._clock = clock
        self._writer = uuid.uuid4().hex
        self._lock = threading.Lock()

    # --- restore -------------------------------------------------------------------------------

    def restore(self) -> Checkpoint | None:
        """The latest good checkpoint, or None when there is none."""
        pointer = self._read_pointer()
        if pointer is not None:
            seq = pointer[0].get("seq")
            if isinstance(seq, int):
                found = self._load(seq)
                if found is not None:
                    return found
                log.warning(
                    "checkpoint %d named by %s is unusable; looking for an older one",
                    seq,
                    self.store.locate(POINTER),
                )
        candidates = sorted(self._manifest_seqs(), reverse=True)[:_MAX_FALLBACK]
        for seq in candidates:
            found = self._load(seq)
            if found is not None:
                return found
        return None

    def _load(self, seq: int) -> Checkpoint | None:
        """Checkpoint ``seq`` if its manifest is valid and its data matches it, else None."""
        raw = self.store.read(manifest_name(seq))
        if raw is None:
            return None
        try:
            meta = json.loads(raw)
            ok = (
                isinstance(meta, dict)
                and meta.get("v") == 1
                and meta.get("seq") == seq
                and isinstance(meta.get("sha256"), str)
                and isinstance(meta.get("bytes"), int)
            )
        except ValueError:
            ok = False
        if not ok:
            log.warning("manifest %s is invalid; skipped", self.store.locate(manifest_name(seq)))
            return None
        data = self.store.read(data_name(seq))
        if data is None or len(data) != meta["bytes"]:
            log.warning(
                "checkpoint %s is missing or torn; skipped", self.store.locate(data_name(seq))
            )
            return None
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            log.warning(
                "checkpoint %s fails its sha256; skipped", self.store.locate(data_name(seq))
            )
            return None
        return Checkpoint(data=data, meta=meta, location=self.store.locate(data_name(seq)))

    # --- save ----------------------------------------------------------------------------------

    def save(
        self,
        state: object,
        *,
        progress: Any = None,
        reason: str = "save",
        event_id: str | None = None,
        clean_up: bool = True,
    ) -> Saved:
        """Encode ``state``, write it and commit it as the latest checkpoint.

        Raises StoreError (storage failed; nothing was committed), ConcurrentWriter or StaleWriter.
        ``clean_up=False`` skips removing old checkpoints (the yield path does that later, if ever,
        to answer the agent sooner).
        """
        data, encoding = encode_state(state)
        digest = hashlib.sha256(data).hexdigest()
        json.dumps(progress, allow_nan=False)  # fail before writing anything, not half-way
        with self._lock:
            pointer = self._read_pointer()
            base = 0
            if pointer is not None:
                self._check_not_stale(pointer[0])
                base = _as_int(pointer[0].get("seq"))
            seq = self._write_data(base + 1, data)
            meta: dict[str, Any] = {
                "v": 1,
                "seq": seq,
                "data": data_name(seq),
                "bytes": len(data),
                "sha256": digest,
                "encoding": encoding,
                "run_id": self.run_id,
                "step": self.step,
                "retry_index": self.retry_index,
                "progress": progress,
                "created": self._clock().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "reason": reason,
                "event_id": event_id,
                "writer": self._writer,
            }
            raw_meta = json.dumps(meta, sort_keys=True).encode()
            try:
                self.store.create(manifest_name(seq), raw_meta)
            except AlreadyExists:
                # A retried upload whose first attempt did land is ours; anything else is not.
                if self.store.read(manifest_name(seq)) != raw_meta:
                    raise
            self._commit(seq, pointer)
            saved = Saved(
                location=self.store.locate(data_name(seq)),
                size=len(data),
                seq=seq,
                sha256=digest,
                progress=progress,
                meta=meta,
            )
        if clean_up:
            self.clean_up(seq)
        return saved

    def _write_data(self, seq: int, data: bytes) -> int:
        for _ in range(_MAX_ATTEMPTS):
            try:
                self.store.create(data_name(seq), data)
            except AlreadyExists:
                # Another writer, or a writer killed before its commit, used this number.
                seq = max([seq, *self._all_seqs()]) + 1
            else:
                return seq
        raise StoreError(
            f"no free checkpoint number at {self.store.url} after {_MAX_ATTEMPTS} tries"
        )

    def _commit(self, seq: int, pointer: tuple[dict[str, Any], str] | None) -> None:
        record = {"v": 1, "seq": seq, "retry_index": self.retry_index, "writer": self._writer}
        raw = json.dumps(record, sort_keys=True).encode()
        for _ in range(_MAX_ATTEMPTS):
            tag = None if pointer is None else pointer[1]
            try:
                self.store.swap(POINTER, raw, tag)
            except ConditionFailed:
                pointer = self._read_pointer()
                if pointer is None:
                    continue
                current = pointer[0]
                if current.get("writer") == self._writer and current.get("seq") == seq:
                    return  # our own write, whose answer was lost and retried
                self._check_not_stale(current)
                if _as_int(current.get("seq")) >= seq:
                    raise ConcurrentWriter(
                        f"another writer committed checkpoint {current.get('seq')} at "
                        f"{self.store.url} while this one wrote {seq}; {seq} is not the latest"
                    ) from None
            else:
                return
        raise ConcurrentWriter(f"could not move {self.store.locate(POINTER)}: too much contention")

    def _check_not_stale(self, pointer: Mapping[str, Any]) -> None:
        theirs = _as_int(pointer.get("retry_index"))
        if theirs > self.retry_index:
            raise StaleWriter(
                f"retry {theirs} of this step already writes to {self.store.url}; "
                f"this is retry {self.retry_index}"
            )

    # --- retention -----------------------------------------------------------------------------

    def clean_up(self, committed: int) -> None:
        """Keep the ``keep`` newest checkpoints up to ``committed``; remove older ones and any
        left-overs below it. Best effort: a failure is logged, never raised."""
        try:
            names = self.store.names()
            manifests = sorted(s for s in (_seq_of(_MANIFEST, n) for n in names) if s is not None)
            kept = {s for s in manifests if s <= committed}
            kept = set(sorted(kept)[-self.keep :])
            for seq in manifests:
                if seq < committed and seq not in kept:
                    # Manifest first: a manifest without its data would restore as "torn" noise.
                    self.store.delete(manifest_name(seq))
                    self.store.delete(data_name(seq))
            for name in names:
                number = _seq_of(_DATA, name)
                if number is not None and number < committed and number not in kept:
                    self.store.delete(name)  # data whose writer died before the manifest
            self.store.sweep()
        except CheckpointError as exc:
            log.warning("could not remove old checkpoints at %s: %s", self.store.url, exc)

    # --- helpers -------------------------------------------------------------------------------

    def _read_pointer(self) -> tuple[dict[str, Any], str] | None:
        got = self.store.read_tagged(POINTER)
        if got is None:
            return None
        raw, tag = got
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            # Cannot happen with this package's atomic writes; treat it as "no pointer" but keep
            # its tag so the next commit replaces it instead of failing on "exists".
            log.warning("%s is unreadable; ignoring it", self.store.locate(POINTER))
            return {}, tag
        return record, tag

    def _manifest_seqs(self) -> list[int]:
        return [s for s in (_seq_of(_MANIFEST, n) for n in self.store.names()) if s is not None]

    def _all_seqs(self) -> list[int]:
        names = self.store.names()
        found = [_seq_of(_MANIFEST, n) for n in names] + [_seq_of(_DATA, n) for n in names]
        return [s for s in found if s is not None]


def _seq_of(pattern: re.Pattern[str], name: str) -> int | None:
    match = pattern.match(name)
    return int(match.group(1)) if match else None


def _as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
