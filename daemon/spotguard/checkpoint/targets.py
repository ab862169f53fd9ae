"""Which pods are asked to checkpoint, where, and what their answers mean (policy, no I/O).

A pod opts in with annotations (DESIGN.md, Contracts → Pods); the KFP helper sets them on
pipeline steps. ``checkpoint/protocol.py`` is the mechanism that applies these rules.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spotguard.kube.pods import FINISHED_PHASES, PodRef, pod_ref

OPT_IN_ANNOTATION = "spotguard.io/checkpoint"
PORT_ANNOTATION = "spotguard.io/checkpoint-port"
PATH_ANNOTATION = "spotguard.io/checkpoint-path"
RESULT_ANNOTATION = "spotguard.io/checkpoint-result"
OPT_IN_VALUE = "http"
DEFAULT_PORT = 8471
DEFAULT_PATH = "/checkpoint"
#: The one Secret (per namespace) the agent may read, and its key.
TOKEN_SECRET = "spotguard-checkpoint"  # noqa: S105 (a Secret's name)
TOKEN_KEY = "token"  # noqa: S105 (a key name)
MAX_PATH_LENGTH = 256


class Outcome(enum.StrEnum):
    """How one checkpoint request ended; the value is what the pod's annotation says."""

    SAVED = "saved"  # 200: the step saved and is exiting with the yield code
    EXITING = "exiting"  # 409: the step is already exiting by itself (SIGTERM, or done)
    NOT_SAVED = "not_saved"  # any other answer (503 save failed, 504 no safe point in time)
    REFUSED = "refused"  # 401/403: the step does not accept this namespace's token
    TIMEOUT = "timeout"  # no answer before the checkpoint deadline
    UNREACHABLE = "unreachable"  # connection refused or reset: nothing listens there
    NO_TOKEN = "no_token"  # noqa: S105 (the Secret is missing or unreadable)
    INVALID = "invalid"  # the pod's annotations do not say where to ask
    DRY_RUN = "dry_run"  # logged, not sent


#: The step will exit by itself: the drain keeps its hands off until the checkpoint deadline.
EXITS_BY_ITSELF = frozenset({Outcome.SAVED, Outcome.EXITING, Outcome.DRY_RUN})
#: The metric outcome of each (``spotguard_actions_total{action="checkpoint"}``).
METRIC_OUTCOME: Mapping[Outcome, str] = {
    Outcome.SAVED: "success",
    Outcome.EXITING: "skipped",
    Outcome.DRY_RUN: "skipped",
    **{o: "error" for o in Outcome if o not in {Outcome.SAVED, Outcome.EXITING, Outcome.DRY_RUN}},
}


@dataclass(frozen=True, slots=True)
class Target:
    """An opted-in, running pod and the endpoint it serves (or why it has none usable)."""

    ref: PodRef
    ip: str
    port: int
    path: str
    #: why the annotations cannot be used; empty when they can
    problem: str = ""

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}{self.path}"


def opted_in(pod: Mapping[str, Any]) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return annotations.get(OPT_IN_ANNOTATION) == OPT_IN_VALUE


def target(pod: Mapping[str, Any]) -> Target | None:
    """The checkpoint endpoint of an opted-in pod that is running; None for any other pod.

    A pod being deleted by another actor (AKS node auto-drain) is still asked: its SIGTERM
    handler is saving anyway, and the answer tells us how that went.
    """
    if not opted_in(pod):
        return None
    status = pod.get("status") or {}
    if status.get("phase") in FINISHED_PHASES or status.get("phase") == "Pending":
        return None
    ref = pod_ref(pod)
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    ip = str(status.get("podIP") or "")
    port_text = str(annotations.get(PORT_ANNOTATION, DEFAULT_PORT)).strip()
    path = str(annotations.get(PATH_ANNOTATION, DEFAULT_PATH)).strip()
    problem = ""
    port = 0
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        problem = f"{PORT_ANNOTATION} must be a port number, not {port_text[:40]!r}"
    else:
        port = int(port_text)
    if not path.startswith("/") or len(path) > MAX_PATH_LENGTH or any(c in path for c in " ?#"):
        problem = problem or f"{PATH_ANNOTATION} must be a plain absolute path, not {path[:40]!r}"
    if not ip:
        problem = problem or "the pod has no IP yet"
    return Target(ref=ref, ip=ip, port=port, path=path, problem=problem)


def outcome_of_status(status: int) -> Outcome:
    if status == 200:
        return Outcome.SAVED
    if status == 409:
        return Outcome.EXITING
    if status in (401, 403):
        return Outcome.REFUSED
    return Outcome.NOT_SAVED


@dataclass(frozen=True, slots=True)
class Result:
    """One pod's checkpoint request, as it ended."""

    namespace: str
    name: str
    outcome: Outcome
    #: seconds from sending the request to its answer (or giving up)
    seconds: float = 0.0
    status: int | None = None
    location: str = ""
    size: int | None = None
    error: str = ""
    #: loop time the request was handed to the connection (None: never sent)
    sent_at: float | None = None

    def annotation(self, *, event_id: str, at: str) -> str:
        """The value of ``spotguard.io/checkpoint-result`` (JSON, one line)."""
        doc: dict[str, Any] = {
            "event_id": event_id,
            "result": self.outcome.value,
            "at": at,
            "seconds": round(self.seconds, 3),
        }
        if self.status is not None:
            doc["status"] = self.status
        if self.location:
            doc["location"] = self.location
        if self.size is not None:
            doc["bytes"] = self.size
        if self.error:
            doc["error"] = self.error[:300]
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def parse_answer(status: int, body: bytes) -> tuple[str, int | None, str]:
    """(location, bytes, error) from a step's answer; a 200 without them is not a save."""
    try:
        doc = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        return "", None, f"answer {status} is not a JSON object: {body[:80]!r}"
    if status != 200:
        return "", None, str(doc.get("error") or f"answered {status}")[:300]
    location, size = doc.get("location"), doc.get("bytes")
    if not isinstance(location, str) or not location:
        return "", None, "answer 200 without a 'location'"
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return location, None, "answer 200 without a valid 'bytes'"
    return location, size, ""


def summary(results: list[Result]) -> str:
    """One line for the node's SpotguardCheckpointRequested Event."""
    counts: dict[str, int] = {}
    for result in results:
        counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
    parts = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
    failed = [
        f"{r.namespace}/{r.name} ({r.outcome.value})"
        for r in results
        if r.outcome not in EXITS_BY_ITSELF
    ]
    text = f"checkpoint requested from {len(results)} pipeline steps: {parts}"
    if failed:
        text += "; not saved: " + ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else "")
    return text
