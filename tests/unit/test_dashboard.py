"""The Grafana dashboard: committed JSON == generator output, and every query is sound offline.

Offline means: each PromQL expression parses with promql-parser after Grafana's macros and the
template variables are replaced, uses only functions Prometheus 2.x has, names only series the
agent exports (its catalogue on a fresh registry) or documented external series, and uses only
label names and label values those series have. Whether the queries return data from a real
Prometheus fed by the real agent is tests/stack/test_queries.py's job (it reuses
``generate.dashboard_queries`` and ``generate.render``).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from datetime import UTC, datetime

import promql_parser
import pytest
import yaml
from dashboards import generate
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from spotguard.model import Kind
from spotguard.observability.metrics import Metrics
from tests.monitoring import ALERTS_DIR

#: Labels every agent series gets from the scrape (dashboards/relabel.yaml, plus job/instance).
TARGET_LABELS = frozenset({"namespace", "pod", "node", "job", "instance"})
#: Series the dashboard reads that the agent does not export, with their labels. Documented in
#: dashboards/README.md: the recording rule in dashboards/alerts/spotguard.rules.yml, and queue
#: mode's fleet counter (DESIGN.md, Contracts -> Metrics).
EXTERNAL_SERIES: dict[str, frozenset[str]] = {
    generate.NODE_INFO_RULE: frozenset({"namespace", "pod", "node", "cluster", "nodepool"}),
    "spotguard_fleet_evictions_total": frozenset({"cluster", "nodepool"}) | TARGET_LABELS,
}
#: Labels with a small fixed set of values: a matcher on them must name a value that exists.
FIXED_LABELS = frozenset({"kind", "source", "outcome", "action"})
#: Functions and aggregations the dashboard may use: all exist in Prometheus 2.42 (Debian's, used
#: by the tests) and in Azure Managed Prometheus. promql-parser follows 3.x and accepts some that
#: 2.x rejects (limitk, info, ...), so check the server before adding one here.
PROMETHEUS_2_FUNCTIONS = frozenset(
    {
        "increase",
        "rate",
        "histogram_quantile",
        "last_over_time",
        "max_over_time",
        "label_replace",
        "time",
        "vector",
        # aggregation operators
        "sum",
        "max",
        "min",
        "count",
    }
)

QUERIES = generate.dashboard_queries()
QUERY_IDS = [f"{q.panel} {q.ref_id}".strip() for q in QUERIES]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(generate.OUTPUT.read_text())
    return loaded


@pytest.fixture(scope="module")
def catalogue() -> dict[str, dict[str, set[str]]]:
    """Every series name of the agent's /metrics → its label names → values seen, on a fresh
    registry once identity is known and a notice is active (the two series that are absent on
    an idle agent, spotguard_node_info and spotguard_notice_deadline_timestamp_seconds, appear
    then)."""
    metrics = Metrics(CollectorRegistry())
    metrics.node_info(nodepool="spot1", vm_size="Standard_D4s_v5", priority="spot", cluster="c1")
    metrics.set_active(Kind.PREEMPT, 1, datetime(2026, 11, 28, tzinfo=UTC))
    text = generate_latest(metrics.registry).decode()
    series: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = series[sample.name]
            for name, value in sample.labels.items():
                labels[name].add(value)
    return series


def selectors(expr: str) -> list[tuple[promql_parser.VectorSelector, bool]]:
    """Each vector selector of ``expr`` (rendered) and whether it sits in a range ``[...]``."""
    found: list[tuple[promql_parser.VectorSelector, bool]] = []
    inner_of_range = False  # walk is depth-first: a range's own selector is visited next

    def visit(node: promql_parser.Expr) -> None:
        nonlocal inner_of_range
        if isinstance(node, promql_parser.MatrixSelector):
            found.append((node.vector_selector, True))
            inner_of_range = True
        elif isinstance(node, promql_parser.VectorSelector):
            if not inner_of_range:
                found.append((node, False))
            inner_of_range = False

    promql_parser.walk(promql_parser.parse(generate.render(expr)), visit)
    return found


def functions(expr: str) -> set[str]:
    """The functions and aggregation operators ``expr`` (rendered) uses."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.Call):
            names.add(node.func.name)
        elif isinstance(node, promql_parser.AggregateExpr):
            names.add(str(node.op))

    promql_parser.walk(promql_parser.parse(generate.render(expr)), visit)
    return names


# --- the committed JSON ------------------------------------------------------------------------


def test_committed_json_is_the_generator_output() -> None:
    committed = generate.OUTPUT.read_text()
    assert committed == generate.to_json(), (
        "dashboards/spotguard.json differs from what dashboards/generate.py builds: "
        "run `.venv/bin/python dashboards/generate.py` and commit both"
    )


def test_json_is_stable_across_builds() -> None:
    assert generate.to_json() == generate.to_json(generate.build())


def test_panels_have_unique_ids_and_titles(dashboard: dict[str, object]) -> None:
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), titles
    for panel in panels:
        if panel["type"] != "row":
            assert panel.get("targets"), f"{panel['title']} has no query"
            assert panel.get("description"), f"{panel['title']} has no description"


def test_every_panel_and_query_uses_the_datasource_variable(dashboard: dict[str, object]) -> None:
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


# --- every query, offline ----------------------------------------------------------------------


def test_there_are_queries() -> None:
    assert len(QUERIES) >= 25  # a guard against dashboard_queries() silently finding nothing


@pytest.mark.parametrize("query", QUERIES, ids=QUERY_IDS)
def test_query_parses(query: generate.PanelQuery) -> None:
    promql_parser.parse(generate.render(query.expr))


@pytest.mark.parametrize("query", QUERIES, ids=QUERY_IDS)
def test_query_uses_only_prometheus_2_functions(query: generate.PanelQuery) -> None:
    assert functions(query.expr) <= PROMETHEUS_2_FUNCTIONS


@pytest.mark.parametrize("query", QUERIES, ids=QUERY_IDS)
def test_query_series_and_labels_exist(
    query: generate.PanelQuery, catalogue: dict[str, dict[str, set[str]]]
) -> None:
    for selector, _ in selectors(query.expr):
        name = selector.name
        assert name, f"selector without a metric name: {selector}"
        if name in EXTERNAL_SERIES:
            labels = EXTERNAL_SERIES[name]
            values: dict[str, set[str]] = {}
        else:
            assert name in catalogue, f"{name} is not in the agent's /metrics"
            values = catalogue[name]
            labels = frozenset(values) | TARGET_LABELS
        for matcher in selector.matchers.matchers:
            assert matcher.name in labels, f"{name} has no label {matcher.name!r}"
            if matcher.name not in FIXED_LABELS or not values:
                continue
            known = values[matcher.name]
            if matcher.op in (promql_parser.MatchOp.Equal, promql_parser.MatchOp.NotEqual):
                assert matcher.value in known, f"{name}{{{matcher}}}: not one of {sorted(known)}"
            else:  # every alternative of a regex must match a real value
                for part in matcher.value.split("|"):
                    assert any(re.fullmatch(part, v) for v in known), f"{name}{{{matcher}}}"


@pytest.mark.parametrize("query", QUERIES, ids=QUERY_IDS)
def test_events_are_read_over_a_range(query: generate.PanelQuery) -> None:
    """Counters and histograms only through a range (increase over the step or the dashboard
    range), so an event stays visible after its node and its series are gone; and never the live
    spotguard_node_info, which disappears with the node: cluster and pool come from the rule."""
    for selector, ranged in selectors(query.expr):
        name = selector.name or ""
        assert name != "spotguard_node_info", "join on the recording rule, not the live series"
        if name.endswith(("_total", "_bucket", "_count", "_sum")):
            assert ranged, f"{name} read without a range"
        if name == generate.NODE_INFO_RULE:
            assert ranged, "read the recording rule over the same window as the event"


@pytest.mark.parametrize("query", QUERIES, ids=QUERY_IDS)
def test_agent_series_are_filtered_by_cluster_and_node_pool(query: generate.PanelQuery) -> None:
    """Every panel honours the variables: through the joined rule or the series' own labels."""
    text = generate.render(query.expr, {"cluster": "CLUSTER", "nodepool": "POOL"})
    assert 'cluster=~"CLUSTER"' in text
    assert 'nodepool=~"POOL"' in text


def test_recording_rule_is_the_one_in_the_rule_files() -> None:
    records = {
        rule["record"]
        for path in ALERTS_DIR.glob("*.rules.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    assert generate.NODE_INFO_RULE in records


def test_required_panels_are_there() -> None:
    """The issue's list: each is a metric some query must read."""
    used = {selector.name for q in QUERIES for selector, _ in selectors(q.expr)}
    assert {
        "spotguard_active_notices",
        "spotguard_notices_total",
        "spotguard_notice_to_action_seconds_bucket",
        "spotguard_drain_duration_seconds_bucket",
        "spotguard_deadline_margin_seconds_bucket",
        "spotguard_deadline_missed_seconds_bucket",
        "spotguard_deadline_missed_seconds_count",
        "spotguard_checkpoint_duration_seconds_bucket",
        "spotguard_actions_total",
        "spotguard_fleet_evictions_total",
        "spotguard_imds_requests_total",
        "spotguard_imds_blind",
    } <= used


# --- template variables ------------------------------------------------------------------------


def test_variables_are_defined(dashboard: dict[str, object]) -> None:
    templating = dashboard["templating"]
    assert isinstance(templating, dict)
    variables = {v["name"]: v for v in templating["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in generate.VARIABLES:
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] == "${datasource}"
        assert variable["includeAll"]
        assert variable["multi"]
        # "All" must send a regex: every use is `=~"$var"`
        assert variable["allValue"] == generate.ALL_VALUE
        assert variable["refresh"] == 2  # on time range change: pools of nodes that are gone too


@pytest.mark.parametrize("query", QUERIES, ids=QUERY_IDS)
def test_query_variables_resolve(query: generate.PanelQuery) -> None:
    used = set(re.findall(r"\$\{?(\w+)\}?", query.expr))
    macros = {m.removeprefix("$") for m in generate.MACROS}
    assert used <= set(generate.VARIABLES) | macros, used
    for name in generate.VARIABLES:  # only ever used as a regex matcher
        for use in re.finditer(rf"(\W*)\${name}\b", query.expr):
            assert use.group(1).endswith('=~"'), query.expr


def test_variable_queries_resolve(catalogue: dict[str, dict[str, set[str]]]) -> None:
    queries = generate.variable_queries()
    assert set(queries) == set(generate.VARIABLES)
    for name, query in queries.items():
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert match, query
        selector = promql_parser.parse(generate.render(match.group(1)))
        assert isinstance(selector, promql_parser.VectorSelector)
        assert selector.name == "spotguard_node_info"
        assert match.group(2) == name
        assert name in catalogue["spotguard_node_info"]
        assert name in EXTERNAL_SERIES[generate.NODE_INFO_RULE]
    # nodepool's choices follow the chosen clusters
    assert '$cluster"' in queries["nodepool"]


def test_render_replaces_macros_and_variables() -> None:
    expr = 'increase(x{cluster=~"$cluster", nodepool=~"${nodepool}"}[$__rate_interval]) [$__range]'
    assert generate.render(expr, {"cluster": "a|b"}) == (
        'increase(x{cluster=~"a|b", nodepool=~".*"}[1m]) [1h]'
    )
    with pytest.raises(KeyError, match="unknown variable"):
        generate.render("x[$__range_s]")
