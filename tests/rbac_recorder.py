"""What spotguard asked the API server for in the end-to-end tests: the basis for exact RBAC.

The e2e tests run ``spotguard run`` (the agent) and ``spotguard queue`` (queue mode) as child
processes against ``spotguard simulate-cluster``, whose request log records every request as the
apiserver's authorizer sees it (verb, API group, resource, subresource, namespace, name).
``tests/e2e/conftest.py`` hooks two places for every e2e test:

- ``asyncio.create_subprocess_exec``: a ``python -m spotguard run|queue`` child is noted with the
  ``KUBECONFIG`` it was given, which names the emulator it talks to: that is the identity
  (ServiceAccount) each emulator's spotguard requests belong to;
- ``ClusterProcess.stop``: before an emulator stops (after the test's spotguard processes have
  stopped), its whole request log is read and spotguard's requests are kept here.

spotguard's own requests are told from the test's (the harness's ``HARNESS_UA`` reads, the
tests' plain aiohttp calls standing in for the kubelet or an operator) by User-Agent:
``spotguard/<version> (run|queue)`` (``spotguard.kube.client.user_agent``), which also names the
identity. A request whose User-Agent names another identity than the process given that
emulator's kubeconfig is reported as unattributed, so the two sources must agree.

``RECORDER`` lives for the pytest session; ``tests/deploy/test_rbac.py`` (run after the e2e tests,
see ``tests/conftest.py``) compares it with ``deploy/``'s RBAC.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AGENT",
    "QUEUE",
    "RECORDER",
    "Access",
    "Recorder",
    "is_spotguard_client",
    "spotguard_command",
]

AGENT = "agent"  # spotguard run: ServiceAccount spotguard
QUEUE = "queue"  # spotguard queue: ServiceAccount spotguard-queue
#: spotguard subcommand -> identity (the other subcommands never talk to the API server)
IDENTITIES = {"run": AGENT, "queue": QUEUE}

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


def spotguard_command(argv: Sequence[Any]) -> str | None:
    """``run`` for ``<python> -m spotguard run ...`` (likewise any subcommand), else None."""
    args = [str(a) for a in argv]
    for i in range(len(args) - 2):
        if args[i] == "-m" and args[i + 1] == "spotguard":
            return args[i + 2]
    return None


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
    #: requests of a spotguard client on an emulator that no single identity talked to
    unattributed: list[dict[str, Any]] = field(default_factory=list)
    #: User-Agents that are neither spotguard's client nor one of the tests' known ones
    unknown_agents: set[str] = field(default_factory=set)
    #: emulator kubeconfig -> identities of the spotguard processes pointed at it
    _clients: dict[str, set[str]] = field(default_factory=dict)
    #: tests that stopped an emulator, in order
    tests: list[str] = field(default_factory=list)
    #: request logs that could not be read
    errors: list[str] = field(default_factory=list)

    def note_spawn(self, argv: Sequence[Any], env: Mapping[str, str] | None) -> None:
        """A child process is about to start: remember which emulator a spotguard
        ``run``/``queue`` was pointed at."""
        identity = IDENTITIES.get(spotguard_command(argv) or "")
        kubeconfig = (os.environ if env is None else env).get("KUBECONFIG")
        if identity is None or not kubeconfig:
            return
        self._clients.setdefault(_key(kubeconfig), set()).add(identity)

    def collect(
        self,
        kubeconfig: Path | str,
        entries: Iterable[Mapping[str, Any]],
        *,
        test: str,
        own_agents: Iterable[str] = (),
    ) -> None:
        """Keep spotguard's requests from one emulator's request log (read as it stops).

        ``own_agents``: the User-Agents of the test's own requests (not spotguard's)."""
        identities = self._clients.pop(_key(kubeconfig), set())
        own = set(own_agents)
        self.tests.append(test)
        for entry in entries:
            user_agent = str(entry.get("user_agent") or "")
            if not is_spotguard_client(user_agent):
                if user_agent not in own and not _is_plain_aiohttp(user_agent):
                    self.unknown_agents.add(f"{user_agent!r} ({test})")
                continue
            identity = identity_of(user_agent)
            if identity is None or identity not in identities:
                self.unattributed.append({**entry, "test": test, "identities": sorted(identities)})
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


def _key(kubeconfig: Path | str) -> str:
    return str(Path(kubeconfig).resolve())


def _is_plain_aiohttp(user_agent: str) -> bool:
    """aiohttp's default (``Python/3.11 aiohttp/3.x``): the tests' stand-ins for the kubelet,
    AKS's auto-drain or an operator, which send no User-Agent of their own."""
    return user_agent.startswith("Python/") and " aiohttp/" in user_agent


RECORDER = Recorder()
