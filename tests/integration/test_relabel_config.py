"""dashboards/relabel.yaml in a real scrape job: the Prometheus the tests use accepts it.

A job like the README's plain-Prometheus example (every 5 s) with the file's relabel_configs and
metric_relabel_configs; `promtool check config` validates the relabel actions, labels and regexes
offline. Debian's Prometheus is built without Kubernetes service discovery (`field
kubernetes_sd_configs not found`), so the job has a static target: the relabelling is checked,
not discovery."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.monitoring import ROOT, run, tool

RELABEL = ROOT / "dashboards" / "relabel.yaml"


def test_promtool_accepts_a_scrape_job_with_the_relabelling(tmp_path: Path) -> None:
    relabel = yaml.safe_load(RELABEL.read_text())
    job = {
        "job_name": "spotguard",
        "scrape_interval": "5s",
        "scrape_timeout": "4s",
        "static_configs": [{"targets": ["127.0.0.1:9464"]}],
        "relabel_configs": [
            {
                "action": "keep",
                "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                "regex": "spotguard",
            },
            *relabel["relabel_configs"],
        ],
        "metric_relabel_configs": relabel["metric_relabel_configs"],
    }
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [job]}))
    result = run(tool("promtool", "prometheus"), "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
