"""The recorders the hot paths call: build one per policy worker or simulator, serve them.

One interface, two implementations behind a flag:

- `backend="prometheus"` (compose, plain processes): prometheus_client metrics in the default
  registry; the process exposes them with `serve_metrics(port)`.
- `backend="ray"` (Ray Serve replicas, Ray actors): `ray.util.metrics`, so the numbers reach the
  Ray metrics agent of the node and Ray's Prometheus endpoint. Ray prefixes every name with
  `ray_`; monitoring/prometheus/prometheus.yml strips that prefix again, so dashboards and rules
  use one name for both.
- `backend="off"`: `NullWorkerMetrics` / `NullSimMetrics`, methods that do nothing.

The metrics and their bounded labels are defined in `metrics_defs`; the recorders are in
`metrics_worker` and `metrics_sim`; `metrics_backends` binds a metric on either library, and
`metrics_refresh` keeps the gauges fresh. Recorders bind their label values once at construction,
so a hot-path call is a few attribute lookups and a lock per observation (about a microsecond each
with prometheus_client).
"""

from __future__ import annotations

from typing import Any

from rolloutq.monitoring.metrics_backends import BACKENDS
from rolloutq.monitoring.metrics_sim import NullSimMetrics, SimMetrics
from rolloutq.monitoring.metrics_worker import NullWorkerMetrics, WorkerMetrics


def worker_metrics(policy: str, worker: str, backend: str = "prometheus") -> WorkerMetrics:
    """The recorder for one policy worker; backend is "prometheus", "ray" or "off"."""
    if backend == "off":
        return NullWorkerMetrics(policy, worker)
    if backend not in BACKENDS:
        raise ValueError(f"metrics backend {backend!r} is not one of {BACKENDS}")
    return WorkerMetrics(policy, worker, backend)


def sim_metrics(sim: str, policy: str = "", backend: str = "prometheus") -> SimMetrics:
    """The recorder for one simulator; backend is "prometheus", "ray" or "off"."""
    if backend == "off":
        return NullSimMetrics(sim, policy)
    if backend not in BACKENDS:
        raise ValueError(f"metrics backend {backend!r} is not one of {BACKENDS}")
    return SimMetrics(sim, policy, backend)


def serve_metrics(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve this process's prometheus_client registry on http://addr:port/metrics (a daemon
    thread). Returns the server (`.shutdown()` stops it). Port 0 picks a free port:
    `server.server_port` tells which."""
    import prometheus_client as pc

    server, _thread = pc.start_http_server(port, addr)
    return server
