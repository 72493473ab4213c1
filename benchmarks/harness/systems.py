"""Starting and stopping what a scenario measures: a rolloutq policy worker (C) behind a fresh
redis-server, as a plain process or as one Ray Serve replica, and the reference design (B).

All product settings are built in `worker_settings`, the one place that knows their shape.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.harness.load import POLICY
from benchmarks.harness.model import PolicySpec


@dataclass(frozen=True)
class WorkerCounts:
    """The worker's cumulative counters from its stats hash (refreshed about once a second)."""

    served: int = 0
    batches: int = 0
    busy_s: float = 0.0

    def since(self, before: WorkerCounts, window_s: float) -> dict[str, Any]:
        batches = self.batches - before.batches
        served = self.served - before.served
        return {"mean_batch": round(served / batches, 2) if batches else None, "worker_batches": batches,
                "worker_busy_frac": round((self.busy_s - before.busy_s) / window_s, 3),
                "worker_infer_ms_per_batch": round(1000 * (self.busy_s - before.busy_s) / batches, 1)
                if batches else None}


def worker_settings(policy: PolicySpec, graphs: bool, overrides: dict[str, Any], redis_url: str,
                    max_batch_size: int, max_wait_ms: float) -> Any:
    from rolloutq.broker.settings import BatchSettings, RedisSettings, WorkerSettings
    from rolloutq.policy_workers.loop import PolicyWorkerSettings

    return PolicyWorkerSettings(
        backend=policy.backend,
        backend_options={**policy.backend_options(graphs), **overrides},
        redis=RedisSettings(url=redis_url),
        worker=WorkerSettings(policy=POLICY, batch=BatchSettings(max_batch_size=max_batch_size,
                                                                 max_wait_ms=max_wait_ms)),
    )


def _plain_worker(settings: Any, stop: Any) -> None:
    from rolloutq.policy_workers.loop import PolicyWorker

    worker = PolicyWorker(settings)

    async def main() -> None:
        done = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.2)
            done.set()

        watcher = asyncio.create_task(watch())
        await worker.run(done)
        watcher.cancel()

    asyncio.run(main())


class RolloutqWorker:
    """A policy worker serving `POLICY` from its own redis-server; `mode` is "plain" (the
    `policy-worker` loop in a process of its own) or "serve" (one Ray Serve replica)."""

    def __init__(self, settings_for: Any, mode: str, gpus: float, replica_cpus: float = 1.0,
                 ray_cpus: int = 4, redis_server: str | None = None) -> None:
        from rolloutq.broker.embedded import EmbeddedRedis

        if mode not in ("plain", "serve"):
            raise ValueError(f"rolloutq mode must be 'plain' or 'serve', not {mode!r}")
        self.redis = EmbeddedRedis(binary=redis_server).start()
        self.url = self.redis.url
        self.settings = settings_for(self.url)
        self.mode, self.gpus, self.replica_cpus, self.ray_cpus = mode, gpus, replica_cpus, ray_cpus
        self._process: Any = None
        self._stop: Any = None

    def start(self, timeout_s: float = 400.0) -> float:
        """Starts the worker; returns the seconds until it published its metadata."""
        import redis
        from rolloutq.broker.keys import Keys

        t = time.perf_counter()
        if self.mode == "plain":
            ctx = mp.get_context("spawn")
            self._stop = ctx.Event()
            self._process = ctx.Process(target=_plain_worker, args=(self.settings, self._stop), daemon=True)
            self._process.start()
        else:
            import ray
            from rolloutq.policy_workers.serve import ServeSettings, deploy

            ray.init(num_cpus=self.ray_cpus, num_gpus=self.gpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
            deploy(self.settings, ServeSettings(num_gpus=self.gpus, num_cpus=self.replica_cpus))
        self._r = redis.Redis.from_url(self.url)
        self._keys = Keys()
        while not self._r.hget(self._keys.policy_meta(POLICY), "metadata"):
            if self._process is not None and not self._process.is_alive():
                raise RuntimeError(f"the policy worker exited with {self._process.exitcode} before serving")
            if time.perf_counter() - t > timeout_s:
                raise RuntimeError(f"the policy worker did not publish its metadata within {timeout_s:.0f} s")
            time.sleep(0.2)
        return time.perf_counter() - t

    def counts(self) -> WorkerCounts:
        served = batches = 0
        busy = 0.0
        for raw in self._r.hgetall(self._keys.worker_stats(POLICY)).values():
            st = json.loads(raw)
            served += int(st.get("served_total", 0))
            batches += int(st.get("batches_total", 0))
            busy += float(st.get("busy_s_total", 0.0))
        return WorkerCounts(served, batches, busy)

    def stop(self) -> None:
        if self._process is not None:
            self._stop.set()
            self._process.join(timeout=60)
            if self._process.is_alive():
                self._process.kill()
        elif self.mode == "serve":
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
        self.redis.cleanup()


class ReferenceServer:
    """The reference design on a local Ray Serve, at http://127.0.0.1:PORT/act."""

    def __init__(self, policy: PolicySpec, graphs: bool, gpus: float, port: int = 8123, ray_cpus: int = 4) -> None:
        self.policy, self.graphs, self.gpus, self.port, self.ray_cpus = policy, graphs, gpus, port, ray_cpus
        self.url = f"http://127.0.0.1:{port}/act"

    def start(self) -> float:
        import ray
        from ray import serve

        from benchmarks.harness.reference import build_app

        ray.init(num_cpus=self.ray_cpus, num_gpus=self.gpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        t = time.perf_counter()
        serve.run(build_app(self.policy, self.graphs, self.gpus), name="reference", route_prefix="/")
        return time.perf_counter() - t

    def stop(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
