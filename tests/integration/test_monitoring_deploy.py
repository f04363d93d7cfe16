"""The shipped Prometheus rules and Grafana dashboard: promtool accepts the rules and the scrape
config, the alerts fire on the series they are written for (promtool's rule unit tests), and
every metric they name is exported by a running radflow."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.proc import RadflowFactory

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "radflow.json"

#: names in PromQL that are not metrics radflow exports
_PROMQL_WORDS = frozenset({
    "up", "time", "sum", "max", "min", "count", "rate", "increase", "histogram_quantile",
    "predict_linear", "by", "and", "or", "unless", "le", "label_values",
})
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool (Debian package prometheus) not installed")


def _expressions() -> list[str]:
    exprs = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"]
             for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return exprs


def _metric_names(expr: str) -> set[str]:
    # Label matchers ({...}) and strings hold label names and values, not metrics.
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}", "", bare)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    words = set(re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", bare))
    # ``by (a, b)`` lists label names
    for labels in re.findall(r"by\s*\(([^)]*)\)", bare):
        words -= {w.strip() for w in labels.split(",")}
    return {w for w in words if w not in _PROMQL_WORDS}


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@needs_promtool
def test_promtool_accepts_rules_and_scrape_config() -> None:
    for args in (["check", "rules", str(RULES)],
                 ["check", "config", str(DEPLOY / "prometheus" / "scrape.yml")]):
        done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_alerts_fire_on_the_series_they_watch() -> None:
    done = subprocess.run(["promtool", "test", "rules",
                           str(DEPLOY / "prometheus" / "alerts_test.yml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_grafana_json_covering_the_pipeline() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"] if p["type"] == "row"}
    assert titles >= {"Nodes", "DICOM intake", "HL7", "Worklist and MPPS", "Routing",
                      "Delivery", "Disk, database, certificates", "Audit trail"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_every_metric_in_dashboard_and_rules_is_exported(radflow: RadflowFactory) -> None:
    named = set().union(*(_metric_names(e) for e in _expressions()))
    assert "radflow_outbox_oldest_age_seconds" in named  # the parser found the metrics
    rf = radflow()
    status, body = rf.http_get("/metrics")
    assert status == 200
    exported: set[str] = set()
    for line in body.decode().splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            exported.add(_family(line.split()[2]))
        elif line and not line.startswith("#"):
            exported.add(_family(re.split(r"[{ ]", line, maxsplit=1)[0]))
    missing = sorted(n for n in named if _family(n) not in exported)
    assert not missing, f"named in deploy/ but not in /metrics: {missing}"
