"""What spotguard asked the API server for in the end-to-end tests: the basis for exact RBAC.

The e2e tests run ``spotguard run`` (the agent) and ``spotguard queue`` (queue mode) as child
processes against ``spotguard simulate-cluster``, whose request log records every request as the
apiserver's authorizer sees it (verb, API group, resource, subresource, namespace, name). No
patching is involved:

- every emulator an e2e test starts (``tests/e2e/agent_harness.py``, ``test_queue_mode.stack``)
  is given ``request_log=`` a path from ``RECORDER.request_log(tmp_path)``: a
  ``*requests.jsonl`` file in the test's ``tmp_path``, which the emulator writes (whole log, JSON
  lines, atomically) when it stops; the path is also noted as expected;
- after the test (``tests/e2e/conftest.py``'s autouse fixture, torn down after the emulators
  have stopped), ``RECORDER.collect_dir(tmp_path, ...)`` reads every ``*requests.jsonl`` there.
  An expected file that is missing (the emulator was killed, or never got to write it) is an
  error. A file written by an emulator started some other way is read too, but its absence
  cannot be noticed.

Each request is attributed by its User-Agent alone: spotguard sends ``spotguard/<version>
(run|queue)`` (``spotguard.kube.client.user_agent``) on every request, which names the identity
(ServiceAccount). A ``spotguard/...`` User-Agent naming another command is reported as
unattributed; the tests' own requests (the harness's ``HARNESS_UA`` reads, the tests' plain
aiohttp calls standing in for the kubelet or an operator) are skipped; any other User-Agent is
reported as unknown.

``RECORDER`` lives for the pytest session; ``tests/deploy/test_rbac.py`` (run after the e2e tests,
see ``tests/conftest.py``) compares it with ``deploy/``'s RBAC.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AGENT",
    "QUEUE",
    "RECORDER",
    "Access",
    "Recorder",
    "identity_of",
    "is_spotguard_client",
]

AGENT = "agent"  # spotguard run: ServiceAccount spotguard
QUEUE = "queue"  # spotguard queue: ServiceAccount spotguard-queue
#: spotguard subcommand -> identity (the other subcommands never talk to the API server)
IDENTITIES = {"run": AGENT, "queue": QUEUE}
#: How an emulator's request log file is named (``RECORDER.request_log``), and found.
LOG_SUFFIX = "requests.jsonl"

#: spotguard's User-Agent, ``spotguard/<version> (<command>)``.
_CLIENT_UA = re.compile(r"^spotguard/\S+ \((?P<command>[a-z-]+)\)$")

#: Denied: the request did not need the verb granted (the emulator never denies, but be exact).
DENIED = frozenset({401, 403})


def is_spotguard_client(user_agent: str) -> bool:
    return _CLIENT_UA.match(user_agent) is not None


def identity_of(user_agent: str) -> str | None:
    """The identity a spotguard User-Agent names (None: not ``run``/``queue``)."""
    match = _CLIENT_UA.match(user_agent)
    return IDENTITIES.get(match.group("command")) if match else None


@dataclass(frozen=True, slots=True, order=True)
class Access:
    """One request as RBAC sees it. ``resource`` includes the subresource (``pods/eviction``);
    ``group`` is ``""`` for the core group. Non-resource requests (discovery, ``/version``) have
    ``resource`` None and ``path`` set."""

    identity: str
    verb: str
    group: str
    resource: str | None
    namespace: str | None
    name: str | None
    path: str | None
    status: int
    fault: str | None
    test: str

    @property
    def pair(self) -> tuple[str, str, str]:
        """(verb, group, resource[/subresource]) for a resource request."""
        assert self.resource is not None, "a non-resource request has no RBAC resource"
        return (self.verb, self.group, self.resource)

    @property
    def answered(self) -> bool:
        """Answered and not denied: status 0 is a request the client gave up on, or one an
        injected fault dropped."""
        return self.status > 0 and self.status not in DENIED


@dataclass
class Recorder:
    """Every spotguard request of the session's e2e tests, with who made it."""

    accesses: list[Access] = field(default_factory=list)
    #: requests with a spotguard User-Agent that names no identity (not ``run``/``queue``)
    unattributed: list[dict[str, Any]] = field(default_factory=list)
    #: User-Agents that are neither spotguard's client nor one of the tests' known ones
    unknown_agents: set[str] = field(default_factory=set)
    #: tests whose request logs were read, in order
    tests: list[str] = field(default_factory=list)
    #: request logs that are missing or could not be read
    errors: list[str] = field(default_factory=list)
    #: request log paths given out (``request_log``), and those of emulators that started
    _given: set[Path] = field(default_factory=set)
    _expected: set[Path] = field(default_factory=set)

    def request_log(self, directory: Path, name: str = "emulator") -> Path:
        """Where an emulator started in ``directory`` (a test's ``tmp_path``) should write its
        request log: ``<name>-requests.jsonl``, numbered if already given out or present."""
        path = directory / f"{name}-{LOG_SUFFIX}"
        n = 1
        while path in self._given or path.exists():
            n += 1
            path = directory / f"{name}-{n}-{LOG_SUFFIX}"
        self._given.add(path)
        return path

    def expect(self, path: Path) -> None:
        """An emulator given ``request_log=path`` has started: it must write the file as it
        stops, and its absence after the test is an error."""
        self._expected.add(path)

    def collect_dir(self, directory: Path, *, test: str, own_agents: Iterable[str] = ()) -> None:
        """After a test: every request log file under ``directory`` (the test's ``tmp_path``)."""
        own = list(own_agents)
        expected = {p for p in self._expected if p.is_relative_to(directory)}
        self._expected -= expected
        self._given -= {p for p in self._given if p.is_relative_to(directory)}
        found = set(directory.rglob(f"*{LOG_SUFFIX}"))
        for path in sorted(expected - found):
            self.errors.append(
                f"{test}: the emulator's request log {path} was not written (did it stop "
                "cleanly? it writes the file on SIGTERM, not when killed)"
            )
        for path in sorted(found):
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
                entries = [json.loads(line) for line in lines if line.strip()]
            except (OSError, ValueError) as exc:
                self.errors.append(f"{test}: could not read the request log {path}: {exc!r}")
                continue
            self.collect(entries, test=test, own_agents=own)

    def collect(
        self,
        entries: Iterable[Mapping[str, Any]],
        *,
        test: str,
        own_agents: Iterable[str] = (),
    ) -> None:
        """Keep spotguard's requests from one emulator's request log, each attributed to the
        identity its User-Agent names.

        ``own_agents``: the User-Agents of the test's own requests (not spotguard's)."""
        own = set(own_agents)
        if test not in self.tests:
            self.tests.append(test)
        for entry in entries:
            user_agent = str(entry.get("user_agent") or "")
            if not is_spotguard_client(user_agent):
                if user_agent not in own and not _is_plain_aiohttp(user_agent):
                    self.unknown_agents.add(f"{user_agent!r} ({test})")
                continue
            identity = identity_of(user_agent)
            if identity is None:
                self.unattributed.append({**entry, "test": test})
                continue
            resource = entry.get("resource")
            subresource = entry.get("subresource")
            if resource and subresource:
                resource = f"{resource}/{subresource}"
            self.accesses.append(
                Access(
                    identity=identity,
                    verb=str(entry["verb"]),
                    group=str(entry.get("group") or ""),
                    resource=str(resource) if entry.get("resource_request") and resource else None,
                    namespace=entry.get("namespace"),
                    name=entry.get("name"),
                    path=None if entry.get("resource_request") else str(entry.get("path")),
                    status=int(entry.get("status") or 0),
                    fault=entry.get("fault"),
                    test=test,
                )
            )

    # --- views -------------------------------------------------------------------------------

    def of(self, identity: str) -> list[Access]:
        return [a for a in self.accesses if a.identity == identity]

    def pairs(self, identity: str) -> set[tuple[str, str, str]]:
        """(verb, group, resource) of every answered resource request of ``identity``: the
        permissions it needed. A 404, 409, 422 or 429 counts (the verb was used); a fault the
        emulator injected counts too, since it only changes the answer to a request spotguard
        made anyway (and a retry or fallback it causes is real behaviour)."""
        return {a.pair for a in self.of(identity) if a.answered and a.resource is not None}

    def unanswered_only(self, identity: str) -> set[tuple[str, str, str]]:
        """Pairs seen only in requests that got no answer (never granted, but worth knowing)."""
        seen = {a.pair for a in self.of(identity) if a.resource is not None}
        return seen - self.pairs(identity)

    def fault_only(self, identity: str) -> set[tuple[str, str, str]]:
        """Pairs that only ever appeared in requests an injected fault answered."""
        clean = {a.pair for a in self.of(identity) if a.answered and a.resource and a.fault is None}
        return self.pairs(identity) - clean

    def non_resource(self, identity: str) -> set[tuple[str, str]]:
        """(verb, path) of requests outside the resource API (discovery, ``/version``)."""
        return {(a.verb, a.path or "") for a in self.of(identity) if a.resource is None}

    def names(self, identity: str, resource: str) -> set[tuple[str | None, str | None, str]]:
        """(namespace, name, verb) of ``identity``'s answered requests for ``resource``."""
        return {
            (a.namespace, a.name, a.verb)
            for a in self.of(identity)
            if a.resource == resource and a.answered
        }

    def flows(self) -> set[str]:
        """Which of the three flows the session exercised: ``agent`` (any agent request),
        ``checkpoint`` (the agent read a checkpoint token Secret), ``queue``."""
        found: set[str] = set()
        for access in self.accesses:
            found.add(access.identity)
            if access.identity == AGENT and access.resource == "secrets" and access.answered:
                found.add("checkpoint")
        return found


def _is_plain_aiohttp(user_agent: str) -> bool:
    """aiohttp's default (``Python/3.11 aiohttp/3.x``): the tests' stand-ins for the kubelet,
    AKS's auto-drain or an operator, which send no User-Agent of their own."""
    return user_agent.startswith("Python/") and " aiohttp/" in user_agent


RECORDER = Recorder()
