"""Inside Ray: recorders on the Ray backend reach the node's metrics endpoint, and the shipped
`ray` scrape job (with its prefix-stripping relabel) makes them queryable under the same names
as the prometheus_client backend."""

from __future__ import annotations

import os

import pytest

from tests.monitoring.conftest import free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def ray_metrics_port():
    ray = pytest.importorskip("ray")
    port = free_port()
    # Ray reads this (case-sensitive) name at start: report every 3 s instead of every 10 (still
    # longer than the recorders' gauge refresh, which this test relies on: no explicit tick()).
    knob = "RAY_metrics_report_interval_ms"
    old = os.environ.get(knob)
    os.environ[knob] = "3000"  # noqa: SIM112
    try:
        ray.init(num_cpus=1, include_dashboard=False, _metrics_export_port=port, configure_logging=False)
        yield port
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop(knob, None)
        else:
            os.environ[knob] = old


def test_ray_backend_reaches_prometheus(ray_metrics_port, mon_prometheus):
    import ray

    @ray.remote
    class Replica:
        def __init__(self):
            from rolloutq.monitoring.metrics import sim_metrics, worker_metrics

            self.w = worker_metrics("raypol", "rep1", backend="ray")
            self.s = sim_metrics("raysim", "raypol", backend="ray")

        def work(self):
            # the method names rolloutq.broker.consumer / rolloutq.sim_workers.worker call
            self.w.on_batch(4, [0.01] * 4, 0.05, 0.001, 0.002)
            for _ in range(4):
                self.w.on_reply("ok")
            self.s.on_round_trip(0.06)
            self.s.on_steps(8)
            self.s.on_episode("success")
            return True

    rep = Replica.remote()
    prom = mon_prometheus({"ray": [ray_metrics_port]})

    def seen():
        ray.get(rep.work.remote())
        missing = [q for q in (
            'rolloutq_worker_batch_size_count{policy="raypol",worker="rep1"}',
            'rolloutq_worker_requests_total{policy="raypol",status="ok"}',
            'rolloutq_worker_up{policy="raypol"}',
            'rolloutq_sim_round_trip_seconds_bucket{policy="raypol",sim="raysim"}',
            'rolloutq_sim_env_steps_total{policy="raypol"}',
            'rolloutq_sim_successes_total{policy="raypol"}',
            'rolloutq_sim_up{policy="raypol"}',
        ) if not prom.query(q)]
        if missing:
            raise AssertionError(f"missing {missing}; up={prom.query('up')}")
        return True

    wait_for(seen, 90, every=1.0, what="Ray-recorded rolloutq metrics in Prometheus")
    assert not prom.query('{__name__=~"ray_rolloutq_.*"}'), "the ray_ prefix should be stripped"
    q = "histogram_quantile(0.5, sum by (le) (rate(rolloutq_sim_round_trip_seconds_bucket[1m])))"
    wait_for(lambda: prom.value(q) is not None, 30, every=1.0, what="p50 from Ray histograms")
