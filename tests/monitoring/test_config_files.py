"""Structural checks of the dashboard JSON, the Grafana provisioning files and the Prometheus
files (promtool, when installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from rolloutq.monitoring import render_dashboard
from rolloutq.monitoring.exporter import QUEUE_METRICS
from rolloutq.monitoring.metrics_defs import SIM_METRICS, WORKER_METRICS

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "monitoring" / "grafana"
PROM = ROOT / "monitoring" / "prometheus"


def dashboard() -> dict:
    return json.loads(render_dashboard.DASHBOARD.read_text())


def datasource_uid() -> str:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1 and len(ds["datasources"]) == 1
    d = ds["datasources"][0]
    assert d["type"] == "prometheus" and d["url"].startswith("http")
    return d["uid"]


def test_dashboard_provider_points_at_a_folder():
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "rolloutq.yml").read_text())
    assert prov["apiVersion"] == 1
    (p,) = prov["providers"]
    assert p["type"] == "file" and p["options"]["path"].startswith("/")


def test_dashboard_structure():
    d = dashboard()
    uid = datasource_uid()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in d["templating"]["list"]}
    for v in d["templating"]["list"]:
        assert v["datasource"]["uid"] == uid
    occupied = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0 and g["y"] >= 0, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat", "gauge", "heatmap", "table"), p["type"]
        assert p["datasource"]["uid"] == uid
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid and t["expr"].strip()
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var.startswith("__"), f"unknown variable ${var}"


def test_dashboard_covers_what_the_issue_asks():
    text = json.dumps(dashboard())
    for needle in ("rolloutq_queue_lag", "rolloutq_queue_pending", "arrival_rate", "service_rate",
                   "utilization", "round_trip_seconds:p99", "inference_seconds:p95", "batch_size",
                   "replicas_up", "rolloutq_sim_up", "env_steps", "success_ratio", "gpu_utilization"):
        assert needle in text, needle


def test_every_metric_the_dashboard_names_is_defined():
    defined = {d.name for d in WORKER_METRICS + SIM_METRICS} | {n for n, _, _ in QUEUE_METRICS}
    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    exprs = [t["expr"] for p in render_dashboard.panels(dashboard()) for t in p["targets"]]
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    for e in exprs:
        for name in re.findall(r"\b(?:policy:)?rolloutq_[a-z0-9_:]+", e):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in recorded or name in defined or base in defined, f"{name} in {e}"


def test_metric_names_follow_conventions():
    for d in WORKER_METRICS + SIM_METRICS:
        assert d.name.startswith("rolloutq_")
        assert (d.kind == "counter") == d.name.endswith("_total"), d.name
        assert "rollout" not in d.labels and "episode" not in d.labels and "seq" not in d.labels
        if d.kind == "histogram":
            assert list(d.buckets) == sorted(d.buckets)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) missing")
def test_promtool_accepts_config_and_rules():
    out = subprocess.run(["promtool", "check", "rules", str(PROM / "rules.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(["promtool", "check", "config", str(PROM / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60, cwd=PROM)
    assert out.returncode == 0, out.stdout + out.stderr
