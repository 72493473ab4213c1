"""The real core (policy worker loop + consumer, sim workers + runner, sweep queue) with the
monitoring recorders plugged in as its `metrics`, the exporter polling the same Redis, and a real
Prometheus scraping both: the numbers Prometheus sees agree with what the sweep did."""

from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("rolloutq.broker.consumer")

from rolloutq.broker.client import fetch_metadata  # noqa: E402
from rolloutq.broker.connection import connect_async  # noqa: E402
from rolloutq.broker.keys import Keys  # noqa: E402
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings  # noqa: E402
from rolloutq.broker.sweep import EpisodeSpec, SweepQueue  # noqa: E402
from rolloutq.monitoring.exporter import Exporter, ExporterSettings  # noqa: E402
from rolloutq.monitoring.metrics import serve_metrics, sim_metrics, worker_metrics  # noqa: E402
from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings  # noqa: E402
from rolloutq.sim_workers.tasks import task_class  # noqa: E402
from rolloutq.sim_workers.worker import SimWorker, SimWorkerSettings  # noqa: E402

from tests.monitoring.conftest import wait_for  # noqa: E402

EPISODES = 12


async def sweep(url: str, run: str, seen_up=None) -> tuple[list, dict]:
    """Run the sweep; before stopping the worker, wait until `seen_up()` (Prometheus has a sample of
    the replica up: a fixed sleep raced the 1 s scrape once the sweep got fast)."""
    layout = dict(task_class("reach").layout)
    layout["image_shape"] = [1, 1, 64, 64, 3]
    redis = RedisSettings(url=url)
    worker = PolicyWorker(
        PolicyWorkerSettings(backend="cnn", backend_options=layout, redis=redis, worker=WorkerSettings(
            policy="p", worker_id="w-int", block_ms=20, stats_every_s=0.3,
            batch=BatchSettings(max_batch_size=16, max_wait_ms=2.0))),
        metrics=worker_metrics("p", "w-int"),
    )
    stop = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(stop))
    r = connect_async(redis)
    try:
        await fetch_metadata(r, Keys(), "p", wait_s=60)
        queue = SweepQueue(r, run)
        config = {"policy": "p", "task": "reach", "task_options": {"image_size": 64, "max_steps": 48},
                  "action_horizon": 8}
        await queue.create(config, [EpisodeSpec(i, i) for i in range(EPISODES)], lease_s=30)
        sims = [SimWorker(SimWorkerSettings(run=run, redis=redis, envs=4, sim_id=f"s{i}", exit_when_drained=True,
                                            client=ClientSettings(deadline_s=60)),
                          metrics=sim_metrics(f"s{i}", "p"))
                for i in range(2)]
        await asyncio.wait_for(asyncio.gather(*[s.run() for s in sims]), 240)
        records = [x for s in sims for x in s.done]
        if seen_up is not None:
            await asyncio.to_thread(wait_for, seen_up, 20, what="Prometheus to see the replica up")
        return records, worker.stats()
    finally:
        stop.set()
        await asyncio.wait_for(worker_task, 30)
        await r.aclose()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_real_core_feeds_prometheus(mon_redis, mon_prometheus):
    exporter = Exporter(mon_redis.client, ExporterSettings(port=0, addr="127.0.0.1", interval_s=0.3))
    exp_port = exporter.serve()
    threading.Thread(target=exporter.run, daemon=True).start()
    server = serve_metrics(0, "127.0.0.1")
    prom = mon_prometheus({"rolloutq-exporter": [exp_port], "rolloutq-workers": [server.server_port]})
    try:
        def q(expr):
            return prom.value(expr)

        records, stats = asyncio.run(sweep(mon_redis.url, "mon-int",
                                           seen_up=lambda: q('max(rolloutq_policy_replicas_up{policy="p"})') == 1))
        assert len(records) == EPISODES
        calls = sum(len(r.round_trip_ms) for r in records)
        steps = sum(r.steps for r in records)
        ok = sum(1 for r in records if r.outcome in ("success", "failure", "policy_error"))
        succ = sum(1 for r in records if r.outcome == "success")

        wait_for(lambda: q('sum(rolloutq_sim_episodes_total{policy="p"})') == EPISODES, 20,
                 what="episodes in Prometheus")
        assert q('sum(rolloutq_sim_round_trip_seconds_count{policy="p"})') == calls
        assert q('sum(rolloutq_sim_env_steps_total{policy="p"})') == steps
        assert q('sum(rolloutq_sim_successes_total{policy="p"})') == succ
        assert q('sum(rolloutq_sim_infra_failures_total{policy="p"})') == EPISODES - ok
        # Every policy query was answered ok, in batches the histogram counted.
        assert q('sum(rolloutq_worker_requests_total{policy="p",status="ok"})') == calls
        assert q('sum(rolloutq_worker_batch_size_sum{policy="p"})') == calls == stats["total_calls"]
        assert q('sum(rolloutq_worker_batch_size_count{policy="p"})') == stats["batches"]
        # The exporter saw the worker (its stats hash) and the queue drained.
        assert q('max_over_time(rolloutq_policy_replicas_up{policy="p"}[5m])') == 1
        assert q('max_over_time(rolloutq_policy_service_rate_per_replica{policy="p"}[5m])') > 0
        wait_for(lambda: q('max_over_time(rolloutq_queue_entries_added_total{policy="p"}[5m])') == calls, 20,
                 what="every request counted as added")
        wait_for(lambda: q('sum(rolloutq_queue_lag{policy="p"})') == 0
                 and q('sum(rolloutq_queue_pending{policy="p"})') == 0, 20, what="queue drained")
        # The worker deregistered on stop.
        wait_for(lambda: q('max(rolloutq_policy_replicas_up{policy="p"})') == 0, 20, what="replica gone")
    finally:
        exporter.stop()
        server.shutdown()
