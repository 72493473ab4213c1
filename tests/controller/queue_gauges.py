"""A minimal stand-in for `rolloutq exporter` in tests and benchmarks: the few queue gauges the
controller reads, under the monitoring package's metric names, computed from Redis the same way
(Redis 7 XINFO counters, or counting with XRANGE on Redis 6.2).

Used where no checkout has monitoring/exporter.py (this branch before the monitoring branch is
merged; the integration tests prefer the real exporter when they find one). Written first because
an early exporter skipped the core's worker-stats entries (their `errors_total` is a per-code
map); the monitoring branch has since fixed that.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis as redis_py
from rolloutq.broker.keys import GROUP, Keys


class QueueGauges:
    def __init__(self, redis_url: str, policy: str | list[str], namespace: str = "rq", interval_s: float = 0.5,
                 stale_after_s: float = 10.0) -> None:
        from prometheus_client import CollectorRegistry

        self.r = redis_py.Redis.from_url(redis_url)
        self.policies = [policy] if isinstance(policy, str) else list(policy)
        self.keys = Keys(namespace)
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.snap: dict[str, dict[str, Any]] | None = None
        self._prev: dict[tuple[str, bytes], tuple[int, float]] = {}
        self._added: dict[str, int] = {}
        self._last_id: dict[str, bytes] = {}
        self._stop = threading.Event()
        self.server: Any = None
        self.port = 0

    def poll(self) -> dict[str, dict[str, Any]]:
        sec, usec = self.r.time()
        now = sec + usec / 1e6
        return {p: self._poll(p, now) for p in self.policies}

    def _poll(self, policy: str, now: float) -> dict[str, Any]:
        key = self.keys.requests(policy)
        lag = pending = 0
        if self.r.exists(key):
            info = self.r.xinfo_stream(key)
            last = info["last-generated-id"]
            prev_last = self._last_id.get(policy)
            if info.get("entries-added") is not None:  # Redis 7
                self._added[policy] = int(info["entries-added"])
            elif prev_last is None:
                self._added[policy] = int(info["length"])
            elif last != prev_last:  # Redis 6.2: count what came after the previous poll
                self._added[policy] += len(self.r.xrange(key, b"(" + prev_last, "+", count=100_000))
            self._last_id[policy] = last
            for g in self.r.xinfo_groups(key):
                if g["name"] in (GROUP, GROUP.encode()):
                    pending = int(g.get("pending") or 0)
                    if g.get("lag") is not None:
                        lag = int(g["lag"])
                    else:
                        delivered = g["last-delivered-id"]
                        lag = 0 if delivered == last else len(
                            self.r.xrange(key, b"(" + delivered if delivered != b"0-0" else "-", "+",
                                          count=100_000))
        added = self._added.get(policy, 0)
        rates, up = [], 0
        for wid, raw in (self.r.hgetall(self.keys.worker_stats(policy)) or {}).items():
            d = json.loads(raw)
            if now - float(d.get("ts", 0)) > self.stale_after_s:
                continue
            up += 1
            served, busy = int(d.get("served_total", 0)), float(d.get("busy_s_total", 0.0))
            prev = self._prev.get((policy, wid))
            if prev is not None and busy - prev[1] > 1e-9:
                rates.append((served - prev[0]) / (busy - prev[1]))
            elif busy > 0:
                rates.append(served / busy)
            self._prev[(policy, wid)] = (served, busy)
        return {"time": now, "added": added, "lag": lag, "pending": pending, "up": up,
                "mu": sum(rates) / len(rates) if rates else None}

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.snap is None:
            return
        lab = ["policy", "shard"]
        fams = {
            "added": CounterMetricFamily("rolloutq_queue_entries_added", "Entries ever added.", labels=lab),
            "lag": GaugeMetricFamily("rolloutq_queue_lag", "undelivered", labels=lab),
            "pending": GaugeMetricFamily("rolloutq_queue_pending", "pending", labels=lab),
            "up": GaugeMetricFamily("rolloutq_policy_replicas_up", "fresh workers", labels=["policy"]),
            "mu": GaugeMetricFamily("rolloutq_policy_service_rate_per_replica", "μ", labels=["policy"]),
        }
        t = 0.0
        for policy, s in self.snap.items():
            for k in ("added", "lag", "pending"):
                fams[k].add_metric([policy, "0"], s[k])
            fams["up"].add_metric([policy], s["up"])
            if s["mu"] is not None:
                fams["mu"].add_metric([policy], s["mu"])
            t = s["time"]
        yield from fams.values()
        g = GaugeMetricFamily("rolloutq_exporter_last_poll_timestamp_seconds", "last poll")
        g.add_metric([], t)
        yield g

    def start(self) -> QueueGauges:
        from prometheus_client import start_http_server

        self.snap = self.poll()
        self.server, _ = start_http_server(0, "127.0.0.1", registry=self.registry)
        self.port = self.server.server_port
        threading.Thread(target=self._run, daemon=True, name="queue-gauges").start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.snap = self.poll()
            except Exception:  # keep the last snapshot; its timestamp goes stale
                time.sleep(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
