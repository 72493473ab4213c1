"""`rolloutq exporter`: publishes the queue metrics of every policy on /metrics.

A loop polls Redis every `interval_s` (`rolloutq.monitoring.queue.QueueProbe`) and keeps the latest
snapshot; a prometheus_client collector turns that snapshot into metrics at scrape time. One
exporter per Redis (per namespace) is enough; it only reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rolloutq.broker.keys import Keys
from rolloutq.monitoring.queue import QueueProbe, Snapshot
from rolloutq.monitoring.worker_records import STALE_AFTER_S

log = logging.getLogger("rolloutq.exporter")


@dataclass
class ExporterSettings:
    """Built at the CLI edge; nothing below reads the environment."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "rq"
    port: int = 9108
    addr: str = "0.0.0.0"
    interval_s: float = 2.0
    stale_after_s: float = STALE_AFTER_S
    """A worker whose stats are older than this counts as down."""
    shards: int = 1
    """Shards per policy when the policy's metadata hash does not say."""
    policies: tuple[str, ...] = ()
    """Policies to watch besides those in `{ns}:policies`."""
    use_xinfo_lag: bool | None = None
    """None: by Redis version; False: force the Redis 6.2 counting path."""
    scan_cap: int = 100_000


# name, kind, help; gauge unless kind says otherwise.
QUEUE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("rolloutq_queue_length", "gauge", "Entries in the request stream (XLEN)."),
    ("rolloutq_queue_lag", "gauge", "Entries not yet delivered to any worker (consumer-group lag)."),
    ("rolloutq_queue_pending", "gauge", "Entries delivered to a worker and not yet acked (XPENDING)."),
    (
        "rolloutq_queue_oldest_undelivered_age_seconds",
        "gauge",
        "Age of the oldest undelivered entry (from its stream id, Redis clock); absent when none.",
    ),
    (
        "rolloutq_queue_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest pending entry (from its stream id, Redis clock); absent when none.",
    ),
    ("rolloutq_queue_dead_letters", "gauge", "Entries in the dead-letter stream."),
    ("rolloutq_queue_entries_added_total", "counter", "Entries ever added to the request stream."),
    ("rolloutq_policy_arrival_rate", "gauge", "λ: observations added per second over the last poll."),
    (
        "rolloutq_policy_service_rate_per_replica",
        "gauge",
        "μ: observations per busy second of one replica at its current batch size (worker stats).",
    ),
    ("rolloutq_policy_replicas_up", "gauge", "Workers whose stats entry is fresh."),
    ("rolloutq_policy_replicas_stale", "gauge", "Workers whose stats entry is older than stale_after_s."),
    ("rolloutq_policy_utilization", "gauge", "ρ = λ / (replicas_up × μ); absent when a term is unknown."),
    ("rolloutq_exporter_last_poll_timestamp_seconds", "gauge", "Redis time of the last successful poll."),
    ("rolloutq_exporter_poll_duration_seconds", "gauge", "Time the last poll took."),
    ("rolloutq_exporter_poll_errors_total", "counter", "Polls that failed (Redis unreachable, ...)."),
)


class _Collector:
    def __init__(self, exporter: Exporter):
        self.ex = exporter

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        fams: dict[str, Any] = {}
        for name, kind, help_ in QUEUE_METRICS:
            if name.startswith("rolloutq_queue_"):
                labels = ["policy", "shard"]
            elif name.startswith("rolloutq_policy_"):
                labels = ["policy"]
            else:
                labels = []
            if kind == "counter":
                fams[name] = CounterMetricFamily(name.removesuffix("_total"), help_, labels=labels)
            else:
                fams[name] = GaugeMetricFamily(name, help_, labels=labels)
        snap, dur, errors = self.ex.snapshot, self.ex.poll_duration_s, self.ex.poll_errors
        fams["rolloutq_exporter_poll_errors_total"].add_metric([], errors)
        if snap is not None:
            fams["rolloutq_exporter_last_poll_timestamp_seconds"].add_metric([], snap.time_s)
            fams["rolloutq_exporter_poll_duration_seconds"].add_metric([], dur)
            for p in snap.policies:
                for s in p.streams:
                    lab = [p.policy, str(s.shard)]
                    fams["rolloutq_queue_length"].add_metric(lab, s.length)
                    fams["rolloutq_queue_lag"].add_metric(lab, s.lag)
                    fams["rolloutq_queue_pending"].add_metric(lab, s.pending)
                    fams["rolloutq_queue_dead_letters"].add_metric(lab, s.dead_letters)
                    fams["rolloutq_queue_entries_added_total"].add_metric(lab, s.entries_added)
                    # Absent means "no such entry"; 0 would read as "a fresh entry".
                    if s.oldest_undelivered_age_s is not None:
                        fams["rolloutq_queue_oldest_undelivered_age_seconds"].add_metric(
                            lab, s.oldest_undelivered_age_s
                        )
                    if s.oldest_pending_age_s is not None:
                        fams["rolloutq_queue_oldest_pending_age_seconds"].add_metric(
                            lab, s.oldest_pending_age_s
                        )
                lab = [p.policy]
                fams["rolloutq_policy_replicas_up"].add_metric(lab, p.replicas_up)
                fams["rolloutq_policy_replicas_stale"].add_metric(lab, p.replicas_stale)
                if p.arrival_rate is not None:
                    fams["rolloutq_policy_arrival_rate"].add_metric(lab, p.arrival_rate)
                if p.service_rate_per_replica is not None:
                    fams["rolloutq_policy_service_rate_per_replica"].add_metric(
                        lab, p.service_rate_per_replica
                    )
                if p.utilization is not None:
                    fams["rolloutq_policy_utilization"].add_metric(lab, p.utilization)
        yield from fams.values()


class Exporter:
    """Polls Redis in a loop; serves the latest snapshot on /metrics from its own registry."""

    def __init__(self, redis: Any, settings: ExporterSettings):
        from prometheus_client import CollectorRegistry

        self.settings = settings
        self.probe = QueueProbe(
            redis,
            Keys(settings.namespace),
            policies=settings.policies,
            shards=settings.shards,
            stale_after_s=settings.stale_after_s,
            use_xinfo_lag=settings.use_xinfo_lag,
            scan_cap=settings.scan_cap,
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.snapshot: Snapshot | None = None
        self.poll_duration_s = 0.0
        self.poll_errors = 0
        self._stop = threading.Event()
        self.server: Any = None

    def poll_once(self) -> Snapshot | None:
        t0 = time.perf_counter()
        try:
            snap = self.probe.poll()
        except Exception as e:  # keep serving the last snapshot; count the failure
            self.poll_errors += 1
            log.warning("queue poll failed: %s", e)
            return None
        self.poll_duration_s = time.perf_counter() - t0
        self.snapshot = snap
        return snap

    def serve(self) -> int:
        """Start the /metrics server (daemon thread); returns the bound port."""
        from prometheus_client import start_http_server

        self.server, _ = start_http_server(self.settings.port, self.settings.addr, registry=self.registry)
        return self.server.server_port

    def run(self) -> None:
        """Poll until `stop()`."""
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.0, self.settings.interval_s - (time.monotonic() - t0)))

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()


def exporter_main(settings: ExporterSettings, redis: Any = None) -> None:
    """Entry point of `rolloutq exporter`: serve /metrics and poll until interrupted."""
    if redis is None:
        import redis as redis_py

        redis = redis_py.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=10)
    ex = Exporter(redis, settings)
    port = ex.serve()
    log.info("rolloutq exporter: http://%s:%d/metrics, polling every %.1fs", settings.addr, port,
             settings.interval_s)
    try:
        ex.run()
    except KeyboardInterrupt:
        pass
    finally:
        ex.stop()
