"""dashboards/relabel.yaml: the PodMonitor and the plain Prometheus spelling say the same thing,
give the agent's series node, namespace and pod, and drop nothing the dashboard reads.
(``promtool check config`` on a scrape job using it: tests/integration/test_relabel_config.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from dashboards import generate
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from spotguard.observability.metrics import Metrics

RELABEL = Path(generate.__file__).with_name("relabel.yaml")
#: prometheus-operator's RelabelConfig fields and their Prometheus spelling.
OPERATOR_TO_PROMETHEUS = {
    "sourceLabels": "source_labels",
    "separator": "separator",
    "targetLabel": "target_label",
    "regex": "regex",
    "modulus": "modulus",
    "replacement": "replacement",
    "action": "action",
}
ACTIONS = {
    "replace",
    "keep",
    "drop",
    "keepequal",
    "dropequal",
    "hashmod",
    "labelmap",
    "labeldrop",
    "labelkeep",
    "lowercase",
    "uppercase",
}


def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RELABEL.read_text())
    return loaded


def as_prometheus(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{OPERATOR_TO_PROMETHEUS[key]: value for key, value in rule.items()} for rule in rules]


def test_only_the_four_lists() -> None:
    assert set(config()) == {
        "relabelings",
        "metricRelabelings",
        "relabel_configs",
        "metric_relabel_configs",
    }


def test_operator_fields_are_valid() -> None:
    for key in ("relabelings", "metricRelabelings"):
        for rule in config()[key]:
            assert set(rule) <= set(OPERATOR_TO_PROMETHEUS), rule
            assert rule["action"] in ACTIONS, rule


def test_both_spellings_are_equivalent() -> None:
    cfg = config()
    assert as_prometheus(cfg["relabelings"]) == cfg["relabel_configs"]
    assert as_prometheus(cfg["metricRelabelings"]) == cfg["metric_relabel_configs"]


def test_target_labels_come_from_the_pod() -> None:
    targets = {
        rule["target_label"]: rule["source_labels"]
        for rule in config()["relabel_configs"]
        if rule["action"] == "replace"
    }
    assert targets == {
        "node": ["__meta_kubernetes_pod_node_name"],
        "namespace": ["__meta_kubernetes_namespace"],
        "pod": ["__meta_kubernetes_pod_name"],
    }


def test_metric_relabelling_drops_only_created_series() -> None:
    """Against the agent's whole /metrics: what is dropped is prometheus_client's *_created,
    and nothing the dashboard reads."""
    text = generate_latest(Metrics(CollectorRegistry()).registry).decode()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    drops = [r for r in config()["metric_relabel_configs"] if r["action"] == "drop"]
    assert drops
    dropped = set()
    for rule in drops:
        assert rule["source_labels"] == ["__name__"]
        dropped |= {n for n in names if re.fullmatch(rule["regex"], n)}
    assert dropped
    assert all(n.endswith("_created") for n in dropped), dropped
    read = {
        name for q in generate.dashboard_queries() for name in re.findall(r"spotguard_\w+", q.expr)
    }
    assert not read & dropped
