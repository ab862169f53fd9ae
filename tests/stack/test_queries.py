"""After the scenarios: every dashboard query returns data from the real Prometheus, the rules
evaluate without errors, and the kube-state-metrics rules see the stand-in's series.

That each query parses offline (promql-parser) and names only real series and labels is
tests/unit/test_dashboard.py's job; here the real server runs them over what the real agents
exported, Grafana's macros and "All" variables replaced as ``generate.render`` does.
"""

from __future__ import annotations

import math
import time

import pytest
from dashboards import generate

from tests.e2e.agent_harness import node_name
from tests.monitoring import alerting_rules
from tests.stack.conftest import Scenarios
from tests.stack.stack import AGENTLESS, NODEPOOL, Stack

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.slow]

QUERIES = generate.dashboard_queries()
QUERY_IDS = [f"{q.panel} {q.ref_id}".strip() for q in QUERIES]
#: Range panels: Grafana's step for $__interval (generate.MACROS).
STEP = 15.0


@pytest.mark.parametrize("query", QUERIES, ids=QUERY_IDS)
async def test_dashboard_query_returns_data(
    query: generate.PanelQuery, stack: Stack, scenarios: Scenarios
) -> None:
    await scenarios.settled()
    expr = generate.render(query.expr)
    end = time.time()
    if query.instant:
        result = await stack.prometheus.query(expr, at=end)
        values = [float(r["value"][1]) for r in result]
    else:
        # Steps counted back from now, so the last one sees the latest scrapes.
        start = end - math.ceil((end - stack.started_at + 60) / STEP) * STEP
        result = await stack.prometheus.query_range(expr, start, end, STEP)
        values = [float(v) for r in result for _, v in r["values"]]
    assert any(not math.isnan(v) for v in values), f"no data for:\n{expr}\n{result}"


async def test_rules_evaluate_without_errors(stack: Stack, scenarios: Scenarios) -> None:
    await scenarios.settled()
    broken = [
        (rule["name"], rule.get("lastError"))
        for group in await stack.prometheus.rule_groups()
        for rule in group["rules"]
        if rule["health"] == "err"
    ]
    assert broken == []


async def test_kube_state_metrics_rules_see_the_stand_in(
    stack: Stack, scenarios: Scenarios
) -> None:
    """SpotguardAgentAbsent's expression (its `for: 5m` is longer than the test) finds the spot
    node that never had an agent, and neither the bystander (its agent runs) nor the preempted
    nodes (their agents tainted them before they went)."""
    await scenarios.settled()
    exprs = {rule["alert"]: rule["expr"] for rule in alerting_rules()}
    absent = await stack.prometheus.query(exprs["SpotguardAgentAbsent"])
    assert [(r["metric"]["node"], r["metric"]["nodepool"]) for r in absent] == [
        (node_name(AGENTLESS), NODEPOOL)
    ]
    assert await stack.prometheus.query(exprs["SpotguardKubeStateMetricsMissing"]) == []
