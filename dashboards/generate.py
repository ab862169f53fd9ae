"""Generates the spotguard Grafana dashboard, spotguard.json, with grafana-foundation-sdk.

    python dashboards/generate.py           # rewrite spotguard.json
    python dashboards/generate.py --check   # exit 1 if spotguard.json is not this script's output

The committed JSON is this script's output; ``tests/unit/test_dashboard.py`` fails when the two
differ. The SDK build is pinned in pyproject.toml (dev extra); it targets Grafana 11.6 (dashboard
``schemaVersion`` 41).

How the queries stay useful after a preempted node is gone (DESIGN.md, Contracts -> Metrics; the
rules' README explains the same choices for the alerts):

* The agent's series die with its VM. Panels never ask "what is the value now?" of an event:
  time-series panels use ``increase``/``max_over_time`` over ``$__rate_interval`` at each step,
  and the overview/table panels use ``increase``/``max_over_time`` over the dashboard range
  (``$__range``, instant queries). A range selector still reads a series after it went stale.
* ``cluster`` and ``nodepool`` come from the recording rule
  ``namespace_pod:spotguard_node_info:last15m`` (one series per agent pod, kept 15m after the pod
  is gone), joined on the pod that exported the series. The join side is itself read with
  ``last_over_time(...[window])`` over the same window as the event, so the join finds the pod even
  for a wide step or a 30-day range where the pod died long before the evaluation time.
* Evictions per node pool take the higher of two views: the agents' own Preempt notices, and
  queue mode's ``spotguard_fleet_evictions_total{cluster,nodepool}`` (which outlives the nodes but
  is not created at zero, so it misses a pool's first eviction).

``dashboard_queries()`` lists every PromQL expression in the dashboard and ``render()`` replaces
Grafana's macros and the template variables, for the offline lint and the real-Prometheus tests.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

OUTPUT = Path(__file__).resolve().with_name("spotguard.json")
UID = "spotguard-overview"

#: The recording rule in dashboards/alerts/spotguard.rules.yml: one series per agent pod
#: (labels namespace, pod, node, cluster, nodepool), kept for 15 minutes after the pod is gone.
NODE_INFO_RULE = "namespace_pod:spotguard_node_info:last15m"
#: The value a multi-value variable takes for "All": a regex, since every use is `=~"$var"`.
ALL_VALUE = ".*"
#: The template variables the expressions use (besides the datasource).
VARIABLES = ("cluster", "nodepool")

RATE = "$__rate_interval"  # time-series panels: one step plus one scrape, at least 4 scrapes
RANGE = "$__range"  # overview and table panels (instant queries): the whole dashboard range
ANNOTATION_WINDOW = "2m"  # annotations run every 60 s (their default step), macros aside

_POOL = 'cluster=~"$cluster", nodepool=~"$nodepool"'
_DATASOURCE = dashboard_models.DataSourceRef(type_val="prometheus", uid="${datasource}")


# --- PromQL building blocks ----------------------------------------------------------------


def _indent(text: str, spaces: int = 2) -> str:
    return "\n".join(" " * spaces + line if line else line for line in text.splitlines())


def node_info(window: str) -> str:
    """Each agent pod's cluster and node pool, seen at any time in ``window``, filtered by the
    dashboard's variables (value 1)."""
    return f"last_over_time({NODE_INFO_RULE}{{{_POOL}}}[{window}])"


def by_pod(vector: str, window: str) -> str:
    """``vector`` (one series per agent pod) with the pod's ``cluster`` and ``nodepool`` added,
    restricted to the selected clusters and node pools."""
    return f"{vector}\n* on (namespace, pod) group_left (cluster, nodepool)\n  {node_info(window)}"


def by_pod_or_unidentified(vector: str, window: str) -> str:
    """Like ``by_pod``, plus the pods that never resolved their identity (no node info at all, so
    no cluster or node pool to filter on): an agent that cannot reach IMDS at start-up is one."""
    return (
        f"(\n{_indent(by_pod(vector, window))}\n)\n"
        f"or\n"
        f"(\n  {vector}\n  unless on (namespace, pod)\n"
        f"    last_over_time({NODE_INFO_RULE}[{window}])\n)"
    )


def aggregate(op: str, labels: str, inner: str) -> str:
    by = f" by ({labels}) " if labels else ""
    return f"{op}{by}(\n{_indent(inner)}\n)"


def increase_by_pod(selector: str, window: str, labels: str) -> str:
    """``sum by (labels)`` of a counter's increase over ``window``, per selected cluster/pool."""
    return aggregate("sum", labels, by_pod(f"increase({selector}[{window}])", window))


def quantile(q: float, histogram: str, window: str, labels: str = "") -> str:
    """The ``q`` quantile of a histogram's observations in ``window``. ``>= 0`` drops the NaN that
    histogram_quantile returns where nothing was observed (NaN compares false)."""
    group = f"le, {labels}" if labels else "le"
    buckets = aggregate("sum", group, by_pod(f"increase({histogram}_bucket[{window}])", window))
    return f"histogram_quantile(\n  {q},\n{_indent(buckets)}\n) >= 0"


def evictions_by_pool(window: str, *, views: bool = False) -> str:
    """Preempted spot VMs per node pool in ``window``: from the agents' Preempt notices and from
    queue mode's fleet counter. With ``views`` both are returned (label ``view``), otherwise the
    higher of the two per pool."""
    agents = increase_by_pod(
        'spotguard_notices_total{kind="preempt", source="imds"}', window, "cluster, nodepool"
    )
    fleet = aggregate(
        "sum",
        "cluster, nodepool",
        f"increase(spotguard_fleet_evictions_total{{{_POOL}}}[{window}])",
    )
    both = (
        f'label_replace(\n{_indent(agents)},\n  "view", "agents", "", ""\n)\n'
        f"or\n"
        f'label_replace(\n{_indent(fleet)},\n  "view", "queue mode", "", ""\n)'
    )
    return both if views else aggregate("max", "cluster, nodepool", both)


def checkpoint_success_ratio(window: str, labels: str) -> str:
    """Share of answered checkpoint requests that succeeded; nothing where none was made."""
    ok = increase_by_pod(
        'spotguard_actions_total{action="checkpoint", outcome="success"}', window, labels
    )
    made = increase_by_pod(
        'spotguard_actions_total{action="checkpoint", outcome=~"success|error"}', window, labels
    )
    return f"{ok}\n/\n(\n{_indent(made)}\n  > 0\n)"


# --- panel builders --------------------------------------------------------------------------


@dataclass(frozen=True)
class Q:
    """One query of a panel."""

    expr: str
    legend: str = ""


_Panel = timeseries.Panel | stat.Panel | bargauge.Panel | table.Panel


def _targets(
    panel: _Panel, queries: tuple[Q, ...], *, instant: bool = False, table_format: bool = False
) -> None:
    for ref, q in zip("ABCDEFGH", queries, strict=False):
        target = (
            prometheus_builders.Dataquery()
            .ref_id(ref)
            .datasource(_DATASOURCE)
            .expr(q.expr)
            .legend_format(q.legend or "__auto")
        )
        target = target.instant() if instant else target.range()
        if table_format:
            target = target.format(prometheus_models.PromQueryFormat.TABLE)
        panel.with_target(target)


def _thresholds(*steps: tuple[float | None, str]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_models.Threshold(value=value, color=color) for value, color in steps])
    )


_OK = _thresholds((None, "green"))
_BAD_FROM_ONE = _thresholds((None, "green"), (1, "red"))


def series(
    panel_id: int,
    title: str,
    description: str,
    *queries: Q,
    unit: str = "short",
    bars: bool = False,
    points: bool = False,
    width: int = 12,
    decimals: float | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> timeseries.Panel:
    """A time-series panel; ``bars`` for counts per step, ``points`` for rare observations."""
    panel = (
        timeseries.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .thresholds(_OK)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .calcs(["max", "sum"] if bars else ["max"])
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .span_nulls(False)
    )
    if bars:
        panel = (
            panel.draw_style(common.GraphDrawStyle.BARS)
            .fill_opacity(80)
            .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
        )
    elif points:
        panel = (
            panel.draw_style(common.GraphDrawStyle.POINTS)
            .point_size(6)
            .show_points(common.VisibilityMode.ALWAYS)
        )
    else:
        panel = panel.draw_style(common.GraphDrawStyle.LINE).fill_opacity(10)
    if decimals is not None:
        panel = panel.decimals(decimals)
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    _targets(panel, queries)
    return panel


def single(
    panel_id: int,
    title: str,
    description: str,
    query: Q,
    *,
    unit: str = "short",
    thresholds: dashboard_builders.ThresholdsConfig = _BAD_FROM_ONE,
    decimals: float = 0,
    no_value: str = "0",
) -> stat.Panel:
    """A stat panel over the dashboard range (instant query)."""
    panel = (
        stat.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit(unit)
        .decimals(decimals)
        .span(4)
        .height(4)
        .thresholds(thresholds)
        .no_value(no_value)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.AUTO)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    _targets(panel, (query,), instant=True)
    return panel


def bars_over_range(
    panel_id: int, title: str, description: str, query: Q, *, width: int = 12
) -> bargauge.Panel:
    """A horizontal bar per series, over the dashboard range (instant query)."""
    panel = (
        bargauge.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .unit("short")
        .decimals(0)
        .min(0)
        .span(width)
        .height(8)
        .thresholds(_thresholds((None, "orange")))
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .no_value("no evictions")
    )
    _targets(panel, (query,), instant=True)
    return panel


def table_over_range(
    panel_id: int, title: str, description: str, query: Q, value_name: str
) -> table.Panel:
    """One row per series, over the dashboard range (instant query, table format)."""
    panel = (
        table.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(_DATASOURCE)
        .decimals(0)
        .span(12)
        .height(8)
        .thresholds(_OK)
        .no_value("none in this range")
        .sort_by([common_builders.TableSortByFieldState().display_name(value_name).desc(True)])
        .with_transformation(
            dashboard_models.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True}, "renameByName": {"Value": value_name}},
            )
        )
    )
    _targets(panel, (query,), instant=True, table_format=True)
    return panel


def row(panel_id: int, title: str) -> dashboard_builders.Row:
    return dashboard_builders.Row(title).id(panel_id)


# --- the dashboard ------------------------------------------------------------------------------


def build() -> dashboard_builders.Dashboard:
    """The spotguard dashboard."""
    node = "cluster, nodepool, node"
    return (
        dashboard_builders.Dashboard("spotguard: spot preemptions and drains")
        .uid(UID)
        .description(
            "Azure spot preemption notices handled by spotguard: drains, deadlines, checkpoints, "
            "evictions per node pool, and the agents' own health. Generated by "
            "dashboards/generate.py; edit that, not this JSON."
        )
        .tags(["spotguard", "aks", "spot"])
        .editable()
        .timezone("browser")
        .time("now-24h", "now")
        .refresh("1m")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dashboard_builders.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
        )
        .with_variable(_pool_variable("cluster", "Cluster", "spotguard_node_info"))
        .with_variable(
            _pool_variable("nodepool", "Node pool", 'spotguard_node_info{cluster=~"$cluster"}')
        )
        .annotation(
            dashboard_builders.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(dashboard_models.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .annotation(
            dashboard_builders.AnnotationQuery()
            .name("Spot notices")
            .datasource(_DATASOURCE)
            .enable(True)
            .icon_color("orange")
            .expr(_notice_annotation())
        )
        # --- overview: the dashboard range in numbers -----------------------------------------
        .with_row(row(100, "Overview (whole dashboard range)"))
        .with_panel(
            single(
                1,
                "Spot VMs preempted",
                "Preempt notices per node pool, the higher of the agents' count and queue "
                "mode's fleet count, summed over the selected pools.",
                Q(f"sum(\n{_indent(evictions_by_pool(RANGE))}\n)"),
                thresholds=_thresholds((None, "blue")),
            )
        )
        .with_panel(
            single(
                2,
                "Deadlines missed",
                "Drains that finished after the notice deadline: their pods died with the VM.",
                Q(aggregate("sum", "", by_pod(_increase_count("deadline_missed"), RANGE))),
            )
        )
        .with_panel(
            single(
                3,
                "Drains failed",
                "Drains that could not move a single pod (outcome=failed).",
                Q(increase_by_pod('spotguard_drains_total{outcome="failed"}', RANGE, "")),
            )
        )
        .with_panel(
            single(
                4,
                "Checkpoint success",
                "Checkpoint requests answered with a saved checkpoint, of those that succeeded "
                "or failed (timeouts count as failures). Empty: no checkpoint was requested.",
                Q(checkpoint_success_ratio(RANGE, "")),
                unit="percentunit",
                decimals=1,
                no_value="no checkpoints",
                thresholds=_thresholds((None, "red"), (0.9, "orange"), (0.99, "green")),
            )
        )
        .with_panel(
            single(
                5,
                "Publish failures",
                "Service Bus publishes that failed: consumers (scheduler, fleet view, audit) "
                "missed those notices or outcomes.",
                Q(
                    increase_by_pod(
                        'spotguard_actions_total{action="publish", outcome="error"}', RANGE, ""
                    )
                ),
            )
        )
        .with_panel(
            single(
                6,
                "Agents blind now",
                "Agents whose IMDS has not answered for longer than the blind threshold (30 s): "
                "a preemption notice there would go unseen. Includes agents that never resolved "
                "their identity.",
                Q(aggregate("sum", "", by_pod_or_unidentified("spotguard_imds_blind", "5m"))),
            )
        )
        # --- notices --------------------------------------------------------------------------
        .with_row(row(101, "Notices"))
        .with_panel(
            series(
                10,
                "Active notices by node",
                "Notices being handled per node and kind (highest in each step). A preempted "
                "node stays on the graph at the time it was handled.",
                Q(
                    aggregate(
                        "max",  # a restarted agent's old and new pod may overlap in a step
                        f"{node}, kind",
                        by_pod(f"max_over_time(spotguard_active_notices[{RATE}])", RATE),
                    )
                    + " > 0",
                    "{{node}} {{kind}}",
                ),
                decimals=0,
                points=True,
                minimum=0,
            )
        )
        .with_panel(
            series(
                11,
                "Notices by kind",
                "Scheduled events seen for the first time, by kind and source (imds: Azure; "
                "drill: rehearsals).",
                Q(
                    increase_by_pod("spotguard_notices_total", RATE, "kind, source") + " > 0",
                    "{{kind}} ({{source}})",
                ),
                bars=True,
                decimals=0,
            )
        )
        .with_panel(
            table_over_range(
                12,
                "Notices per node in range (nodes that are gone included)",
                "Every node that saw a notice in the dashboard range, by kind and source.",
                Q(
                    increase_by_pod("spotguard_notices_total", RANGE, f"{node}, kind, source")
                    + " > 0"
                ),
                "notices",
            )
        )
        .with_panel(
            table_over_range(
                13,
                "Drain outcomes per node in range",
                "How each node's drains ended: drained (all pods moved), partial (some left "
                "at the deadline), failed (none moved). A node with a notice but no row here "
                "died before its drain was reported.",
                Q(
                    increase_by_pod("spotguard_drains_total", RANGE, f"{node}, kind, outcome")
                    + " > 0"
                ),
                "drains",
            )
        )
        # --- response: latency, drains, deadlines ---------------------------------------------
        .with_row(row(102, "Response to a notice"))
        .with_panel(
            series(
                20,
                "Notice → action latency p50 / p99",
                "Time from first sight of a notice to each action's success: cordon and taint "
                "should be well under a second, checkpoints and evictions inside the notice.",
                Q(
                    quantile(0.5, "spotguard_notice_to_action_seconds", RATE, "action"),
                    "{{action}} p50",
                ),
                Q(
                    quantile(0.99, "spotguard_notice_to_action_seconds", RATE, "action"),
                    "{{action}} p99",
                ),
                unit="s",
                points=True,
            )
        )
        .with_panel(
            series(
                21,
                "Drain duration p50 / p99",
                "From the start of a drain to the last pod gone (or given up).",
                Q(quantile(0.5, "spotguard_drain_duration_seconds", RATE), "p50"),
                Q(quantile(0.99, "spotguard_drain_duration_seconds", RATE), "p99"),
                unit="s",
                points=True,
            )
        )
        .with_panel(
            series(
                22,
                "Deadline margin (negative: missed)",
                "Time left before the notice deadline when a drain finished. p5 shows the "
                "close calls; a drain that finished late is plotted below zero by how late it "
                "was (p99).",
                Q(quantile(0.5, "spotguard_deadline_margin_seconds", RATE), "margin p50"),
                Q(quantile(0.05, "spotguard_deadline_margin_seconds", RATE), "margin p5"),
                Q(
                    f"-(\n{_indent(quantile(0.99, 'spotguard_deadline_missed_seconds', RATE))}\n)",
                    "late by (p99)",
                ),
                unit="s",
                points=True,
            )
        )
        .with_panel(
            series(
                23,
                "Deadline misses by node",
                "Drains that finished after the notice deadline, per node.",
                Q(
                    aggregate("sum", node, by_pod(_increase_count("deadline_missed", RATE), RATE))
                    + " > 0",
                    "{{node}}",
                ),
                bars=True,
                decimals=0,
            )
        )
        .with_panel(
            series(
                24,
                "Drains by outcome",
                "Finished drains: drained, partial (pods left at the deadline), failed.",
                Q(
                    increase_by_pod("spotguard_drains_total", RATE, "kind, outcome") + " > 0",
                    "{{kind}} {{outcome}}",
                ),
                bars=True,
                decimals=0,
                width=24,
            )
        )
        # --- checkpoints ----------------------------------------------------------------------
        .with_row(row(103, "Checkpoints"))
        .with_panel(
            series(
                30,
                "Checkpoint success rate",
                "Share of checkpoint requests answered with a saved checkpoint, per node pool.",
                Q(
                    checkpoint_success_ratio(RATE, "cluster, nodepool"),
                    "{{cluster}} / {{nodepool}}",
                ),
                unit="percentunit",
                points=True,
                minimum=0,
                maximum=1,
            )
        )
        .with_panel(
            series(
                31,
                "Checkpoint duration p50 / p99",
                "From a checkpoint request to the step's answer; it must fit in the notice "
                "minus the stop budget (about 25 s for Preempt).",
                Q(quantile(0.5, "spotguard_checkpoint_duration_seconds", RATE), "p50"),
                Q(quantile(0.99, "spotguard_checkpoint_duration_seconds", RATE), "p99"),
                unit="s",
                points=True,
            )
        )
        .with_panel(
            series(
                32,
                "Checkpoint requests by outcome",
                "success: the step saved and answered; error: it failed or timed out; skipped: "
                "not requested (dry run, or no time left).",
                Q(
                    increase_by_pod('spotguard_actions_total{action="checkpoint"}', RATE, "outcome")
                    + " > 0",
                    "{{outcome}}",
                ),
                bars=True,
                decimals=0,
                width=24,
            )
        )
        # --- fleet: what spot costs -----------------------------------------------------------
        .with_row(row(104, "Evictions per node pool (what spot costs in interruptions)"))
        .with_panel(
            series(
                40,
                "Evictions per node pool",
                "Spot VMs preempted per node pool and step: the higher of the agents' Preempt "
                "notices and queue mode's fleet counter.",
                Q(evictions_by_pool(RATE), "{{cluster}} / {{nodepool}}"),
                bars=True,
                decimals=0,
                width=24,
            )
        )
        .with_panel(
            bars_over_range(
                41,
                "Evictions per node pool in range",
                "Preempted spot VMs per node pool over the dashboard range (the higher view).",
                Q(evictions_by_pool(RANGE), "{{cluster}} / {{nodepool}}"),
            )
        )
        .with_panel(
            bars_over_range(
                42,
                "Evictions in range, agents vs queue mode",
                "Both views side by side. Agents miss a VM that died before a scrape; queue "
                "mode misses a pool's first eviction and shows nothing when it does not run.",
                Q(evictions_by_pool(RANGE, views=True), "{{cluster}} / {{nodepool}} ({{view}})"),
            )
        )
        # --- agent health ---------------------------------------------------------------------
        .with_row(row(105, "Agent health"))
        .with_panel(
            series(
                50,
                "IMDS errors",
                "Failed IMDS requests by outcome, and event entries that could not be read. "
                "Agents without a resolved identity are included (no pool label).",
                Q(
                    aggregate(
                        "sum",
                        "cluster, nodepool, outcome",
                        by_pod_or_unidentified(
                            f'increase(spotguard_imds_requests_total{{outcome!="ok"}}[{RATE}])',
                            RATE,
                        ),
                    )
                    + " > 0",
                    "{{outcome}} {{cluster}} / {{nodepool}}",
                ),
                Q(
                    increase_by_pod(
                        "spotguard_imds_invalid_events_total", RATE, "cluster, nodepool"
                    )
                    + " > 0",
                    "invalid events {{cluster}} / {{nodepool}}",
                ),
                bars=True,
                decimals=0,
            )
        )
        .with_panel(
            series(
                51,
                "IMDS blind agents",
                "1 while an agent's IMDS has not answered for longer than the blind threshold: "
                "a preemption there would go unseen.",
                Q(
                    aggregate(
                        "max",
                        node,
                        by_pod_or_unidentified(
                            f"max_over_time(spotguard_imds_blind[{RATE}])", RATE
                        ),
                    )
                    + " > 0",
                    "{{node}}",
                ),
                decimals=0,
                points=True,
                minimum=0,
                maximum=1,
            )
        )
        .with_panel(
            series(
                52,
                "Publish and alert failures",
                "Service Bus publishes and direct Alertmanager alerts that failed, per node.",
                Q(
                    increase_by_pod(
                        'spotguard_actions_total{action=~"publish|alert", outcome="error"}',
                        RATE,
                        f"{node}, action",
                    )
                    + " > 0",
                    "{{action}} {{node}}",
                ),
                bars=True,
                decimals=0,
                width=24,
            )
        )
    )


def _increase_count(histogram: str, window: str = RANGE) -> str:
    return f"increase(spotguard_{histogram}_seconds_count[{window}])"


def _notice_annotation() -> str:
    return (
        increase_by_pod(
            'spotguard_notices_total{source="imds"}',
            ANNOTATION_WINDOW,
            "cluster, nodepool, node, kind",
        )
        + " > 0"
    )


def _pool_variable(name: str, label: str, selector: str) -> dashboard_builders.QueryVariable:
    """A multi-value variable from the agents' node info over the dashboard range ("All" = .*)."""
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(_DATASOURCE)
        .query(f"label_values({selector}, {name})")
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(ALL_VALUE)
        .current(dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


# --- output and the query list -----------------------------------------------------------------


def to_json(board: dashboard_builders.Dashboard | None = None) -> str:
    """The dashboard as committed: sorted keys, two-space indent, trailing newline."""
    model = (board or build()).build()
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class PanelQuery:
    """A PromQL expression of the dashboard, as written (with Grafana macros and variables)."""

    panel: str
    ref_id: str
    expr: str
    instant: bool


def dashboard_queries(model: Mapping[str, Any] | None = None) -> list[PanelQuery]:
    """Every PromQL expression of the dashboard (panels, rows' panels, annotations) in order.

    ``model`` is the dashboard JSON as loaded (default: the committed ``spotguard.json``).
    Template variable queries (``label_values(...)``) are not PromQL: see ``variable_queries``.
    """
    if model is None:
        model = json.loads(OUTPUT.read_text())
    found = [
        PanelQuery(f"annotation {a.get('name', '')}", "", a["expr"], False)
        for a in model.get("annotations", {}).get("list", [])
        if a.get("expr")
    ]
    for panel in _panels(model.get("panels", [])):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                found.append(
                    PanelQuery(
                        panel.get("title", ""),
                        target.get("refId", ""),
                        target["expr"],
                        bool(target.get("instant")),
                    )
                )
    return found


def variable_queries(model: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Each query variable's query (``label_values(<selector>, <label>)``), by variable name."""
    if model is None:
        model = json.loads(OUTPUT.read_text())
    return {
        v["name"]: v["query"]
        for v in model.get("templating", {}).get("list", [])
        if v.get("type") == "query"
    }


def _panels(panels: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # collapsed rows hold their panels


#: Grafana's macros, as the tests replace them: plausible values for a 1h dashboard range.
MACROS = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$__interval": "15s",
}


def render(
    expr: str,
    variables: Mapping[str, str] | None = None,
    macros: Mapping[str, str] | None = None,
) -> str:
    """``expr`` with Grafana's macros and the template variables replaced (default: ``.*``, what
    "All" sends), ready for a PromQL parser or a Prometheus query."""
    values = {name: ALL_VALUE for name in VARIABLES} | dict(variables or {})
    values |= {name.removeprefix("$"): value for name, value in (macros or MACROS).items()}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate dashboards/spotguard.json.")
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: %(default)s")
    args = parser.parse_args(argv)
    text = to_json()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python dashboards/generate.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(dashboard_queries(json.loads(text)))} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
