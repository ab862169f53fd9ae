"""Fixtures shared by the integration tests."""

from tests.cluster_fixtures import cluster, emulator, kube, kubectl

__all__ = ["cluster", "emulator", "kube", "kubectl"]
