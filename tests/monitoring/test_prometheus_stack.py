"""A real Prometheus scraping a running (stand-in) stack: every expression of the dashboard, the
recording rules and the alert rules returns data, and the queue metrics follow a known load."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml
from rolloutq.broker.keys import GROUP, Keys
from rolloutq.broker.schema import Request
from rolloutq.monitoring import render_dashboard
from rolloutq.monitoring.exporter import Exporter, ExporterSettings
from rolloutq.monitoring.metrics import serve_metrics, sim_metrics, worker_metrics
from rolloutq.monitoring.top import TopSettings, snapshot_text, top_once

from tests.monitoring.conftest import PROM_DIR, free_port, wait_for
from tests.monitoring.fakestack import FakeSim, FakeWorker, ensure_group

M = 25
# Expressions that need hardware this machine lacks (NVML + GPU): checked for errors, not data.
NEEDS_GPU = ("rolloutq_gpu_",)


def all_expressions() -> list[tuple[str, str]]:
    """(where, expr) for every dashboard target, recording rule and alert rule."""
    out = []
    dash = json.loads(render_dashboard.DASHBOARD.read_text())
    for p in render_dashboard.panels(dash):
        for t in p["targets"]:
            out.append((f"dashboard {p['title']!r} {t['refId']}", render_dashboard.substitute(t["expr"])))
    rules = yaml.safe_load((PROM_DIR / "rules.yml").read_text())
    for g in rules["groups"]:
        for r in g["rules"]:
            if "record" in r:
                out.append((f"rule {r['record']}", r["expr"]))
                out.append((f"recorded series {r['record']}", r["record"]))
            else:
                out.append((f"alert {r['alert']}", r["expr"]))
    return out


@pytest.mark.timeout(180 + int(float(os.environ.get("ROLLOUTQ_STACK_TEST_EXTRA_S", "0"))))
def test_prometheus_sees_the_whole_stack(mon_redis, mon_prometheus, tmp_path):
    r, keys = mon_redis.client, Keys()
    stop = threading.Event()
    threads: list = []

    exporter = Exporter(r, ExporterSettings(port=0, addr="127.0.0.1", interval_s=0.5, stale_after_s=5))
    exp_port = exporter.serve()
    threading.Thread(target=exporter.run, daemon=True).start()
    metrics_server = serve_metrics(0, "127.0.0.1")
    prom = mon_prometheus({
        "rolloutq-exporter": [exp_port],
        "rolloutq-workers": [metrics_server.server_port],
        "rolloutq-sims": [free_port()],  # nothing listens: RolloutqTargetDown must see it
    })
    try:
        # 1. M requests and no worker: lag = M, in the exporter and in Prometheus.
        r.sadd(keys.policies(), "pol")
        ensure_group(r, keys, "pol")
        for i in range(M):
            r.xadd(keys.requests("pol"), Request("r0", i, b"o", 60000).to_fields())
        wait_for(lambda: exporter.snapshot and exporter.snapshot.policy("pol").total("lag") == M,
                 10, what="exporter lag == M")
        wait_for(lambda: prom.value('sum(rolloutq_queue_lag{policy="pol"})') == M, 20,
                 what="Prometheus lag == M")
        assert prom.value('sum(rolloutq_queue_pending{policy="pol"})') == 0

        # 2. A worker starts: lag and pending drain to 0.
        w = FakeWorker(r, keys, "pol", "w1", worker_metrics("pol", "w1"))
        threads.append(w)
        w.start()
        wait_for(lambda: prom.value('sum(rolloutq_queue_lag{policy="pol"})') == 0
                 and prom.value('sum(rolloutq_queue_pending{policy="pol"})') == 0, 20,
                 what="Prometheus lag and pending drain to 0")

        # 3. Traffic: three simulators in closed loop.
        for i in range(3):
            s = FakeSim(r, keys, "pol", f"sim{i}", sim_metrics(f"sim{i}", "pol"))
            threads.append(s)
            s.start()

        # 4. Conditions every alert watches, on purpose:
        # a worker that died without deregistering (stale stats entry) ...
        r.hset(keys.worker_stats("pol"), "w-dead", json.dumps(
            {"served_total": 1, "batches_total": 1, "busy_s_total": 0.01, "ts": time.time() - 600}))
        # ... a policy nobody serves: one entry delivered long ago and never acked, one old
        # undelivered entry (explicit old ids), then a backlog that keeps growing ...
        r.sadd(keys.policies(), "stuck")
        ensure_group(r, keys, "stuck")
        now_ms = int(r.time()[0] * 1000)
        req = Request("r1", 0, b"o", 60000).to_fields()
        r.xadd(keys.requests("stuck"), req, id=f"{now_ms - 300_000}-0")
        r.xreadgroup(GROUP, "gone", {keys.requests("stuck"): ">"}, count=1)
        r.xadd(keys.requests("stuck"), req, id=f"{now_ms - 200_000}-0")

        def feed():
            while not stop.wait(0.5):
                r.xadd(keys.requests("stuck"), req)

        threading.Thread(target=feed, daemon=True).start()
        # ... and dead letters appearing a little later.
        time.sleep(3)
        r.xadd(keys.dead_letters("pol"), {"reason": "test"})
        r.xadd(keys.dead_letters("stuck"), {"reason": "test"})

        # 5. Every expression returns data (GPU ones: no error), once the rate windows fill.
        exprs = all_expressions()

        def missing():
            bad = []
            for where, expr in exprs:
                res = prom.query(expr)  # raises on a PromQL error
                if not res and not any(n in expr for n in NEEDS_GPU):
                    bad.append(f"{where}: {expr}")
            return bad

        wait_for(lambda: not missing(), 60, every=1.0, what="every expression to return data")
        gpu = [e for _, e in exprs if any(n in e for n in NEEDS_GPU)]
        assert gpu and all("rolloutq_gpu_" in e for e in gpu)
        # Prometheus itself holds every alert pending or firing for the conditions set up above.
        alerts = {r["alert"] for g in yaml.safe_load((PROM_DIR / "rules.yml").read_text())["groups"]
                  for r in g["rules"] if "alert" in r}
        wait_for(lambda: alerts <= {a["metric"]["alertname"] for a in prom.query("ALERTS")}, 15,
                 what=f"alerts {sorted(alerts)} pending or firing")

        # Rule evaluation is healthy, and the numbers make sense.
        groups = prom.api("rules")["data"]["groups"]
        unhealthy = [r["name"] for g in groups for r in g["rules"] if r["health"] != "ok"]
        assert not unhealthy, unhealthy
        rho = prom.value('policy:rolloutq_utilization:rate1m{policy="pol"}')
        mu = prom.value('policy:rolloutq_service_rate_per_replica:rate1m{policy="pol"}')
        assert 0 < rho < 5 and mu > 50  # ≈ batch / 4 ms
        assert prom.value('max(rolloutq_queue_oldest_pending_age_seconds{policy="stuck"})') > 250
        assert prom.value('max(rolloutq_queue_oldest_undelivered_age_seconds{policy="stuck"})') > 150
        assert prom.value('max(rolloutq_policy_replicas_up{policy="pol"})') == 1
        assert prom.value('max(rolloutq_policy_replicas_stale{policy="pol"})') == 1
        ratio = prom.value('policy:rolloutq_sim_success_ratio{policy="pol"}')
        assert 0 <= ratio <= 1

        # (Optional, for docs/img: keep the stack running longer with a load step in the middle.)
        extra = float(os.environ.get("ROLLOUTQ_STACK_TEST_EXTRA_S", "0"))
        if extra:
            time.sleep(extra / 3)
            more = [FakeSim(r, keys, "pol", f"sim{i}", sim_metrics(f"sim{i}", "pol")) for i in range(3, 12)]
            threads.extend(more)
            for s in more:
                s.start()
            time.sleep(extra / 3)
            for s in more:
                s.stop_ev.set()
            time.sleep(extra / 3)

        # 6. The dashboard renders from this Prometheus.
        png = tmp_path / "dashboard.png"
        counts = render_dashboard.render(prom.url, png, minutes=2 + extra / 60)
        assert png.stat().st_size > 20_000
        assert all(n > 0 for t, n in counts.items() if not t.startswith("GPU")), counts
        if keep := os.environ.get("ROLLOUTQ_KEEP_DASHBOARD_PNG"):
            Path(keep).write_bytes(png.read_bytes())

        # 7. `rolloutq top --once` reads the same numbers from Redis.
        snap = top_once(r, TopSettings(interval_s=0.5))
        p = snap.policy("pol")
        assert p.replicas_up == 1 and p.replicas_stale == 1
        assert p.arrival_rate > 0 and p.service_rate_per_replica > 0 and p.utilization is not None
        assert snap.policy("stuck").total("lag") > 0 and snap.policy("stuck").total("pending") == 1
        text = snapshot_text(snap)
        assert "w1" in text and "w-dead" in text and "stale" in text
    finally:
        stop.set()
        for t in threads:
            t.stop_ev.set()
        for t in threads:
            t.join(10)
        exporter.stop()
        metrics_server.shutdown()
