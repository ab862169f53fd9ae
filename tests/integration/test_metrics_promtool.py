"""`promtool check metrics` accepts what /metrics serves, as Prometheus would read it."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest

from spotguard.model import Kind
from spotguard.observability.metrics import Metrics
from tests.monitoring import tool


def test_promtool_accepts_the_exposition() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.node_info(nodepool="spot", vm_size="Standard_D8s_v5", priority="spot", cluster="c")
    metrics.set_active(Kind.PREEMPT, 1, datetime(2026, 11, 28, 14, 0, tzinfo=UTC))
    metrics.action("cordon", "success")
    metrics.notice_to_action("cordon", 0.004)
    metrics.deadline_margin(12.5)
    exposition = generate_latest(metrics.registry)
    result = subprocess.run(
        [tool("promtool", "prometheus"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert b"spotguard_notice_deadline_timestamp_seconds" in exposition
