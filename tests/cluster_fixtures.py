"""Fixtures for tests against the emulated API server (``spotguard.sim.cluster``).

- ``emulator``: in process, for client-level tests (fast; knobs and state at hand)
- ``kube``: a kubernetes-asyncio ``ApiClient`` pointed at ``emulator``
- ``cluster``: ``spotguard simulate-cluster`` in a child process, as the demo and e2e tests run it
- ``kubectl``: runs the pinned ``.venv/bin/kubectl`` against ``cluster`` with HOME and caches in tmp

Import them into a conftest: ``from tests.cluster_fixtures import *``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from spotguard.sim.cluster import ClusterEmulator
from spotguard.sim.cluster_process import ClusterProcess
from spotguard.sim.kube_settings import EmulatorSettings

__all__ = ["Kubectl", "cluster", "emulator", "kube", "kubectl", "make_pod", "wait_for"]

KUBECTL = Path(sys.executable).parent / "kubectl"
TIMEOUT = 5  # seconds, the _request_timeout of every client call in these tests


@pytest.fixture
async def emulator() -> AsyncIterator[ClusterEmulator]:
    # Fast kubelet: pods become Ready at once unless a test says otherwise.
    async with ClusterEmulator(settings=EmulatorSettings(ready_after=0.0)) as emu:
        yield emu


@pytest.fixture
async def kube(emulator: ClusterEmulator) -> AsyncIterator[client.ApiClient]:
    async with client.ApiClient(client.Configuration(host=emulator.url)) as api:
        yield api


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[ClusterProcess]:
    process = ClusterProcess(kubeconfig=tmp_path / "kubeconfig", stderr=tmp_path / "emulator.log")
    async with process:
        yield process


@dataclass(frozen=True)
class Kubectl:
    kubeconfig: Path
    home: Path

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "HOME": str(self.home),
            "PATH": os.environ.get("PATH", ""),
            "KUBECONFIG": str(self.kubeconfig),
            "NO_PROXY": "127.0.0.1,localhost",
        }
        command = [
            str(KUBECTL),
            "--kubeconfig",
            str(self.kubeconfig),
            "--cache-dir",
            str(self.home / "cache"),
            *args,
        ]
        result = subprocess.run(
            command, input=stdin, capture_output=True, text=True, env=env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result


@pytest.fixture
def kubectl(cluster: ClusterProcess, tmp_path: Path) -> Kubectl:
    home = tmp_path / "home"
    home.mkdir()
    return Kubectl(kubeconfig=cluster.kubeconfig, home=home)


def make_pod(
    name: str,
    *,
    namespace: str = "default",
    node: str | None = None,
    labels: Mapping[str, str] | None = None,
    owner: Mapping[str, Any] | None = None,
    grace: int | None = None,
    ready: bool = True,
) -> dict[str, Any]:
    """A schema-valid pod object for seeding (Running and Ready unless ``ready=False``)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if owner:
        meta["ownerReferences"] = [dict(owner)]
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    status: dict[str, Any] = {"phase": "Pending"}
    if ready:
        status = {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


async def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 5.0, interval: float = 0.02
) -> Any:
    """Poll an async or sync predicate until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(interval)
