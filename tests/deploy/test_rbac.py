"""RBAC from behaviour: deploy/'s roles grant exactly what spotguard was seen to ask for.

``tests/rbac_recorder.py`` collects, during this session's end-to-end tests, every request the
agent (``spotguard run``) and queue mode (``spotguard queue``) made to the emulated API server,
from the request log files the emulators write as they stop, each request attributed to its
ServiceAccount by its User-Agent (``spotguard/<version> (run|queue)``). These tests compare that
with the RBAC files, for each ServiceAccount:

- the granted (verb, group, resource) pairs equal the recorded ones: nothing missing, nothing
  unused; no ``*`` anywhere, no nonResourceURLs;
- every recorded request is authorised by the rules as the RBAC authorizer would decide it
  (namespace of each RoleBinding, ``resourceNames`` against the request's name);
- Secrets only through ``resourceNames: [spotguard-checkpoint]``; Leases and ConfigMaps limited by
  ``resourceNames`` for every verb that takes one, naming only objects spotguard used.

They run after every e2e test (``tests/conftest.py`` moves this module last), so they need
``tests/e2e`` in the same session, as ``make test`` runs it; alone, they fail and say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.manifests import kustomize
from tests.rbac_recorder import AGENT, QUEUE, RECORDER, Access, Recorder

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE_RBAC = DEPLOY / "base" / "rbac.yaml"
QUEUE_RBAC = DEPLOY / "overlays" / "queue-mode" / "rbac.yaml"
#: The kustomizations these files are part of, and which of the files each renders.
RENDERED = {
    DEPLOY / "base": (BASE_RBAC,),
    DEPLOY / "overlays" / "queue-mode": (BASE_RBAC, QUEUE_RBAC),
}

#: identity -> its ServiceAccount (namespace, name)
ACCOUNTS = {AGENT: ("spotguard", "spotguard"), QUEUE: ("spotguard", "spotguard-queue")}
#: bound by one RoleBinding per pipeline namespace (the shipped one, kubeflow, is an example)
PER_NAMESPACE_ROLE = "spotguard-checkpoint-token"
CHECKPOINT_SECRET = "spotguard-checkpoint"
#: Resources whose objects spotguard knows by name: every verb but the collection ones must be
#: limited by resourceNames.
NAMED_RESOURCES = {"secrets", "leases", "configmaps"}
#: Verbs RBAC checks without an object name (resourceNames cannot limit them).
UNNAMED_VERBS = {"create", "list", "watch", "deletecollection"}
#: Non-resource paths every authenticated client may read (system:public-info-viewer,
#: system:discovery): spotguard needs no grant for them.
PUBLIC_PATHS = {"/version", "/version/", "/healthz", "/livez", "/readyz", "/api", "/apis"}
#: rbac.authorization.k8s.io kinds
RBAC_KINDS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

Pair = tuple[str, str, str]
Doc = dict[str, Any]


# --- pure functions: what the rules grant, and how that compares with what was used -----------


@dataclass(frozen=True)
class Grant:
    """One (verb, group, resource) a rule grants to an account, where and for which names."""

    verb: str
    group: str
    resource: str
    #: None: everywhere (a ClusterRoleBinding, or a RoleBinding per pipeline namespace)
    namespace: str | None
    #: empty: every object
    names: frozenset[str]
    role: str

    @property
    def pair(self) -> Pair:
        return (self.verb, self.group, self.resource)

    def authorises(self, access: Access) -> bool:
        """As the RBAC authorizer decides one resource request."""
        if access.resource is None or access.pair != self.pair:
            return False
        if self.namespace is not None and access.namespace != self.namespace:
            return False
        return not self.names or access.name in self.names


def rbac_diff(granted: Iterable[Pair], recorded: Iterable[Pair]) -> tuple[set[Pair], set[Pair]]:
    """(missing, unused): pairs recorded but not granted, and granted but never recorded."""
    have, used = set(granted), set(recorded)
    return used - have, have - used


def describe_diff(missing: set[Pair], unused: set[Pair]) -> str:
    lines = [f"  missing (used, not granted): {_fmt(p)}" for p in sorted(missing)]
    lines += [f"  unused (granted, never used): {_fmt(p)}" for p in sorted(unused)]
    return "\n".join(lines)


def _fmt(pair: Pair) -> str:
    verb, group, resource = pair
    return f"{verb} {group or 'core'}/{resource}"


def load(*paths: Path) -> list[Doc]:
    docs: list[Doc] = []
    for path in paths:
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


def wildcards(value: Any, where: str = "") -> Iterator[str]:
    """Every place a ``*`` appears, at any depth."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from wildcards(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from wildcards(item, f"{where}[{i}]")
    elif isinstance(value, str) and "*" in value:
        yield f"{where}: {value!r}"


def grants(docs: list[Doc], account: tuple[str, str]) -> list[Grant]:
    """Every (verb, group, resource) the bindings in ``docs`` give to ServiceAccount ``account``
    (namespace, name). A RoleBinding of ``PER_NAMESPACE_ROLE`` counts everywhere: deploy/ ships
    one (kubeflow) as the pattern, and the operator adds one per pipeline namespace."""
    roles = {(d["kind"], _ns(d), d["metadata"]["name"]): d for d in docs if "rules" in d}
    found: list[Grant] = []
    for binding in docs:
        if binding.get("kind") not in {"ClusterRoleBinding", "RoleBinding"}:
            continue
        subjects = binding.get("subjects") or []
        if not any(
            s.get("kind") == "ServiceAccount" and (s.get("namespace"), s.get("name")) == account
            for s in subjects
        ):
            continue
        ref = binding["roleRef"]
        # A Role is namespaced: a RoleBinding can only refer to the Role of that name in its own
        # namespace (a ClusterRoleBinding to none), and grants it only there.
        role_ns = _ns(binding) if ref["kind"] == "Role" else None
        if ref["kind"] == "Role":
            assert binding["kind"] == "RoleBinding", f"{binding['metadata']['name']}: {ref}"
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        assert role is not None, (
            f"{binding['kind']} {binding['metadata']['name']} ({role_ns}): no {ref} there"
        )
        scope = _ns(binding) if binding["kind"] == "RoleBinding" else None
        if ref["kind"] == "ClusterRole" and ref["name"] == PER_NAMESPACE_ROLE:
            scope = None
        for rule in role["rules"]:
            for group in rule.get("apiGroups") or [""]:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        found.append(
                            Grant(
                                verb,
                                group,
                                resource,
                                scope,
                                frozenset(rule.get("resourceNames") or ()),
                                f"{role['kind']} {ref['name']}",
                            )
                        )
    return found


def _ns(doc: Doc) -> str | None:
    namespace = doc["metadata"].get("namespace")
    return str(namespace) if namespace else None


def rbac_objects(docs: Iterable[Doc]) -> dict[tuple[str, str | None, str], Doc]:
    """RBAC objects by (kind, namespace, name), without the metadata kustomize adds."""
    return {
        (d["kind"], _ns(d), d["metadata"]["name"]): {
            k: v for k, v in d.items() if k in {"rules", "roleRef", "subjects"}
        }
        for d in docs
        if d.get("kind") in RBAC_KINDS
    }


# --- the recording ------------------------------------------------------------------------------


def recorded() -> Recorder:
    """The session's recording; fails (never skips) unless the e2e tests fed it all three flows."""
    missing = {AGENT, "checkpoint", QUEUE} - RECORDER.flows()
    assert not missing, (
        f"no recorded API requests for {sorted(missing)}: these tests compare deploy/'s RBAC with "
        "what the end-to-end tests' agent, checkpoint and queue-mode runs asked for, so run them "
        "with tests/e2e in the same session (make test does: "
        ".venv/bin/python -m pytest tests/e2e tests/deploy/test_rbac.py)"
    )
    assert not RECORDER.errors, "the recording is incomplete:\n" + "\n".join(RECORDER.errors)
    assert not RECORDER.unattributed, (
        "requests with a spotguard User-Agent that names no identity with RBAC in deploy/ "
        "(requests are attributed by User-Agent alone: spotguard/<version> (run|queue)): "
        f"{RECORDER.unattributed[:5]}"
    )
    assert not RECORDER.unknown_agents, (
        "requests from clients that are neither spotguard's nor the tests' own: "
        f"{sorted(RECORDER.unknown_agents)} (teach tests/rbac_recorder.py who they are)"
    )
    return RECORDER


def summary(recorder: Recorder, identity: str) -> str:
    lines = [f"recorded for {identity} ({ACCOUNTS[identity][1]}):"]
    for pair in sorted(recorder.pairs(identity)):
        lines.append(f"  {_fmt(pair)}")
    for verb, path in sorted(recorder.non_resource(identity)):
        lines.append(f"  {verb} {path} (non-resource)")
    for pair in sorted(recorder.fault_only(identity)):
        lines.append(f"  (only ever answered by an injected fault: {_fmt(pair)})")
    for pair in sorted(recorder.unanswered_only(identity)):
        lines.append(f"  (only in unanswered requests, not counted: {_fmt(pair)})")
    return "\n".join(lines)


# --- the checks -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return load(BASE_RBAC, QUEUE_RBAC)


def test_no_wildcards_and_no_non_resource_urls(docs: list[Doc]) -> None:
    for doc in docs:
        name = f"{doc['kind']} {doc['metadata']['name']}"
        assert list(wildcards(doc)) == [], name
        for rule in doc.get("rules") or []:
            assert "nonResourceURLs" not in rule, name
            assert rule.get("resources"), name
            assert rule.get("verbs"), name


@pytest.mark.parametrize("identity", [AGENT, QUEUE])
def test_granted_pairs_are_exactly_the_recorded_ones(identity: str, docs: list[Doc]) -> None:
    recorder = recorded()
    missing, unused = rbac_diff(
        (g.pair for g in grants(docs, ACCOUNTS[identity])), recorder.pairs(identity)
    )
    assert (missing, unused) == (set(), set()), (
        f"{identity}'s RBAC differs from what the e2e tests recorded:\n"
        f"{describe_diff(missing, unused)}\n{summary(recorder, identity)}"
    )


@pytest.mark.parametrize("identity", [AGENT, QUEUE])
def test_every_recorded_request_is_authorised(identity: str, docs: list[Doc]) -> None:
    recorder = recorded()
    granted = grants(docs, ACCOUNTS[identity])
    denied = sorted(
        {
            (a.verb, a.group, a.resource or "", a.namespace or "", a.name or "")
            for a in recorder.of(identity)
            if a.resource is not None and a.answered and not any(g.authorises(a) for g in granted)
        }
    )
    assert denied == [], f"{identity}: these requests would be denied: {denied}"
    # Outside the resource API only public paths (no grant needed, none given).
    paths = {path for _, path in recorder.non_resource(identity)}
    assert paths <= PUBLIC_PATHS, f"{identity}: non-resource requests {paths - PUBLIC_PATHS}"


@pytest.mark.parametrize("identity", [AGENT, QUEUE])
def test_named_objects_are_limited_by_resource_names(identity: str, docs: list[Doc]) -> None:
    recorder = recorded()
    for grant in grants(docs, ACCOUNTS[identity]):
        if grant.resource == "secrets":
            assert grant.verb == "get", grant
            assert grant.names == {CHECKPOINT_SECRET}, grant
        if grant.resource in NAMED_RESOURCES and grant.verb not in UNNAMED_VERBS:
            assert grant.names, f"{grant.role}: {_fmt(grant.pair)} without resourceNames"
        if grant.names:
            # Names limit nothing on these verbs: such a rule would grant nothing.
            assert grant.verb not in UNNAMED_VERBS, grant
            used = {a.name for a in recorder.of(identity) if a.resource and a.pair == grant.pair}
            assert grant.names <= used, f"{grant.role}: names never used: {grant.names - used}"
    # Every Secret the agent read is a checkpoint token; reported for the record.
    secrets = recorder.names(identity, "secrets")
    assert {(name, verb) for _, name, verb in secrets} <= {(CHECKPOINT_SECRET, "get")}, secrets


def test_queue_mode_leases_and_ledger_stay_in_its_namespace(docs: list[Doc]) -> None:
    recorder = recorded()
    for grant in grants(docs, ACCOUNTS[QUEUE]):
        if grant.resource in {"leases", "configmaps"}:
            assert grant.namespace == "spotguard", f"{grant.role} grants {grant} beyond spotguard"
    for access in recorder.of(QUEUE):
        if access.resource in {"leases", "configmaps"}:
            assert access.namespace == "spotguard", access


@pytest.mark.parametrize("directory", sorted(RENDERED), ids=lambda d: d.name)
def test_kustomize_renders_the_rbac_unchanged(directory: Path) -> None:
    """kustomize must not move the RBAC objects (a kustomization-wide ``namespace:`` would
    move the kubeflow RoleBinding) nor rewrite resourceNames (its name-reference transformer
    renames a resourceName that matches a generated ConfigMap to the hashed name)."""
    if not (directory / "kustomization.yaml").exists():
        pytest.fail(f"{directory}/kustomization.yaml is missing")
    rendered = rbac_objects(d for d in yaml.safe_load_all(kustomize(directory)) if d)
    written = rbac_objects(load(*RENDERED[directory]))
    assert set(rendered) == set(written)
    for key, obj in written.items():
        assert rendered[key] == obj, (
            f"kubectl kustomize {directory.relative_to(ROOT)} changed {key}:\n"
            f"written:  {obj}\nrendered: {rendered[key]}\n"
            "(if a resourceName gained a hash suffix: a configMapGenerator there has "
            "the same name, and kustomize rewrites every Role/ClusterRole resourceName that "
            "matches a generated ConfigMap, whatever resource the rule is for; rename the "
            "generated ConfigMap)"
        )


# --- the comparison can fail ------------------------------------------------------------------

RECORDED: set[Pair] = {("get", "", "nodes"), ("create", "", "pods/eviction")}


def test_diff_reports_a_missing_pair() -> None:
    missing, unused = rbac_diff({("get", "", "nodes")}, RECORDED)
    assert missing == {("create", "", "pods/eviction")}
    assert unused == set()
    assert "missing (used, not granted): create core/pods/eviction" in describe_diff(
        missing, unused
    )


def test_diff_reports_an_unused_pair() -> None:
    missing, unused = rbac_diff({*RECORDED, ("delete", "", "pods")}, RECORDED)
    assert missing == set()
    assert unused == {("delete", "", "pods")}


def test_diff_of_equal_sets_is_empty() -> None:
    assert rbac_diff(set(RECORDED), RECORDED) == (set(), set())


def test_grants_follow_bindings_namespaces_and_names() -> None:
    docs = list(
        yaml.safe_load_all(
            """
kind: Role
metadata: {name: r, namespace: ns}
rules: [{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get],
         resourceNames: [l]}]
---
kind: RoleBinding
metadata: {name: r, namespace: ns}
roleRef: {kind: Role, name: r}
subjects: [{kind: ServiceAccount, name: sa, namespace: ns}]
---
kind: ClusterRole
metadata: {name: other}
rules: [{apiGroups: [""], resources: [nodes], verbs: [patch]}]
---
kind: ClusterRoleBinding
metadata: {name: other}
roleRef: {kind: ClusterRole, name: other}
subjects: [{kind: ServiceAccount, name: someone-else, namespace: ns}]
"""
        )
    )
    (grant,) = grants(docs, ("ns", "sa"))
    assert grant.pair == ("get", "coordination.k8s.io", "leases")

    def access(namespace: str, name: str) -> Access:
        return Access(
            "x", "get", "coordination.k8s.io", "leases", namespace, name, None, 200, None, "t"
        )

    assert grant.authorises(access("ns", "l"))
    assert not grant.authorises(access("ns", "other"))
    assert not grant.authorises(access("elsewhere", "l"))
    assert list(wildcards({"rules": [{"verbs": ["*"]}]})) == [".rules[0].verbs[0]: '*'"]


def test_a_role_grants_only_in_its_own_namespace() -> None:
    """A Role binds only from a RoleBinding in its namespace, and authorises only there: the
    agent's Events Role in ``default`` must not cover Events elsewhere."""
    role = """
kind: Role
metadata: {name: events, namespace: default}
rules: [{apiGroups: [""], resources: [events], verbs: [create]}]
"""
    binding = """
kind: RoleBinding
metadata: {name: events, namespace: %s}
roleRef: {kind: Role, name: events}
subjects: [{kind: ServiceAccount, name: sa, namespace: ns}]
"""
    (grant,) = grants(list(yaml.safe_load_all(role + "---" + binding % "default")), ("ns", "sa"))
    assert grant.namespace == "default"

    def create_event(namespace: str) -> Access:
        return Access("x", "create", "", "events", namespace, None, None, 201, None, "t")

    assert grant.authorises(create_event("default"))
    assert not grant.authorises(create_event("spotguard"))
    # A RoleBinding elsewhere does not find the Role (the API server would grant nothing).
    with pytest.raises(AssertionError, match=r"RoleBinding events \(spotguard\): no "):
        grants(list(yaml.safe_load_all(role + "---" + binding % "spotguard")), ("ns", "sa"))
