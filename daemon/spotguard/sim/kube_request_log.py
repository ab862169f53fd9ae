"""What every client asked, as the apiserver's authorizer saw it: the basis for exact RBAC.

Entries are small, appended in O(1), and the log keeps the newest ``size`` of them, so the cost
of a request never depends on how many came before.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class RequestRecord:
    seq: int
    #: wall-clock time the request arrived, RFC 3339 UTC with milliseconds
    at: str
    #: seconds since the emulator started (event-loop clock), for ordering and durations
    t: float
    method: str
    path: str
    #: Kubernetes verb for resource requests (get, list, watch, create, update, patch, delete,
    #: deletecollection); the lower-case HTTP method for non-resource paths (discovery, /version)
    verb: str
    resource_request: bool
    group: str
    version: str
    resource: str | None
    subresource: str | None
    namespace: str | None
    #: the object's name as RBAC ``resourceNames`` sees it (None for create and collection verbs)
    name: str | None
    status: int
    #: Content-Type of PATCH requests (which patch flavour was used)
    content_type: str | None
    user_agent: str
    #: id of the scripted fault that answered it, "kmock" for an in-process kmock reaction
    fault: str | None
    duration_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._entries: list[RequestRecord] = []
        self._next = 1

    @property
    def next_seq(self) -> int:
        return self._next

    def allocate(self) -> int:
        seq = self._next
        self._next += 1
        return seq

    def append(self, record: RequestRecord) -> None:
        self._entries.append(record)
        if len(self._entries) > 2 * self._size:
            drop = len(self._entries) - self._size
            del self._entries[:drop]

    def since(self, seq: int = 0) -> list[RequestRecord]:
        """Entries with a sequence number above ``seq``, oldest first."""
        # Requests finish out of order (watches, delays), so entries are not sorted by seq.
        return sorted((e for e in self._entries if e.seq > seq), key=lambda e: e.seq)

    def clear(self) -> None:
        self._entries.clear()

    def write_jsonl(self, path: Path) -> int:
        """Write every entry, oldest first, as JSON lines (the dicts ``GET /_sim/requests``
        returns) to ``path``, atomically: ``<path>.tmp``, then renamed. The number written."""
        entries = self.since(0)
        tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8") as out:
            for entry in entries:
                out.write(json.dumps(entry.as_dict(), separators=(",", ":")) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        return len(entries)

    def __len__(self) -> int:
        return len(self._entries)
