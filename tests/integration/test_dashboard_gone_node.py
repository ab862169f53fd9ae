"""The dashboard still shows a preemption after its node (and so its agent's series) is gone.

Prometheus's own engine, through `promtool test rules` (no server): the alert rule file provides
the recording rule the panels join on; the dashboard's queries, as generate.render() prepares
them, run against an agent whose series stop 90 s in, right after its Preempt notice, as they do
when the VM is taken. `round()` and `count()` wrap the queries only to make the expected values
exact (increase() extrapolates). Every query returning data from a real Prometheus fed by the
real agent is tests/stack/test_queries.py's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dashboards import generate

from tests.monitoring import RULE_FILES, run, tool

QUERIES = {f"{q.panel} {q.ref_id}": q.expr for q in generate.dashboard_queries()}
#: $__range for the range (instant) panels: 3h, so the notice at 1m is inside it at 40m.
MACROS = {"$__rate_interval": "1m", "$__range": "3h", "$__interval": "15s"}

GONE = 'namespace="spotguard", pod="agent-a", node="n1", job="spotguard"'
ALIVE = 'namespace="spotguard", pod="agent-b", node="n2", job="spotguard"'
# 5 s samples: agent-a's notice counter goes 0 -> 1 at 60 s, its drain ends at 75 s, and its
# series end at 90 s; agent-b (another pool) runs for the whole test and sees nothing.
SERIES = {
    f'spotguard_node_info{{{GONE}, cluster="c1", nodepool="spot1", priority="spot", '
    'vm_size="D4"}': "1x18",
    f'spotguard_node_info{{{ALIVE}, cluster="c1", nodepool="spot2", priority="spot", '
    'vm_size="D4"}': "1x600",
    f'spotguard_notices_total{{{GONE}, kind="preempt", source="imds"}}': "0x11 1x6",
    f'spotguard_notices_total{{{ALIVE}, kind="preempt", source="imds"}}': "0x600",
    f'spotguard_active_notices{{{GONE}, kind="preempt"}}': "0x11 1x6",
    f'spotguard_drains_total{{{GONE}, kind="preempt", outcome="drained"}}': "0x14 1x3",
}
NODE_A = {"cluster": "c1", "nodepool": "spot1", "node": "n1", "kind": "preempt"}


def case(
    panel: str,
    at: str,
    expected: list[dict[str, Any]],
    *,
    wrap: str = "round",
    variables: dict[str, str] | None = None,
) -> dict[str, Any]:
    expr = generate.render(QUERIES[panel], variables, MACROS)
    return {"expr": f"{wrap}(\n{expr}\n)", "eval_time": at, "exp_samples": expected}


def sample(value: float, **labels: str) -> dict[str, Any]:
    text = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"labels": f"{{{text}}}", "value": value}


def test_a_preemption_outlives_its_node(tmp_path: Path) -> None:
    cases = [
        # while it happens: the time-series panels
        case("Active notices by node A", "90s", [sample(1, **NODE_A)]),
        case("Notices by kind A", "90s", [sample(1, kind="preempt", source="imds")]),
        # long after agent-a's series ended (and after the recording rule's 15 minutes)
        case("Spot VMs preempted A", "40m", [sample(1)]),
        case(
            "Notices per node in range (nodes that are gone included) A",
            "40m",
            [sample(1, source="imds", **NODE_A)],
        ),
        case("Drain outcomes per node in range A", "40m", [sample(1, outcome="drained", **NODE_A)]),
        case(
            "Evictions per node pool in range A",
            "40m",
            [sample(1, cluster="c1", nodepool="spot1"), sample(0, cluster="c1", nodepool="spot2")],
        ),
        # the variables still filter it: another cluster, or only the other pool
        case("Spot VMs preempted A", "40m", [], variables={"cluster": "c2"}),
        case(
            "Notices per node in range (nodes that are gone included) A",
            "40m",
            [],
            variables={"nodepool": "spot2"},
        ),
        # and the time-series panels do not smear it over later steps
        case("Active notices by node A", "30m", []),
    ]
    spec = {
        "rule_files": [str(path) for path in RULE_FILES],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "5s",
                "input_series": [{"series": s, "values": v} for s, v in SERIES.items()],
                "promql_expr_test": cases,
            }
        ],
    }
    path = tmp_path / "dashboard.test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, width=200))
    result = run(tool("promtool", "prometheus"), "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
