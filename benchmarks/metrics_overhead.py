"""Cost of metrics on the hot path, end to end: round-trip p50/p99 with metrics off and on, in
the same run.

A real `rolloutq.broker.consumer.StreamConsumer` (a handler that returns a fixed chunk: no model) serves
K closed-loop rollouts driven by `rolloutq.broker.client.PolicyClient` against an embedded redis-server.
Rounds alternate between metrics off (`NullWorkerMetrics`/`NullSimMetrics`) and on
(prometheus_client recorders on both sides, as a worker and a simulator would have them), so
that machine noise hits both alike; percentiles pool the rounds of each mode.

    python -m benchmarks.metrics_overhead --rollouts 1 16 --rounds 6 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import numpy as np
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.consumer import StreamConsumer
from rolloutq.broker.embedded import EmbeddedRedis
from rolloutq.broker.handler import BatchHandler
from rolloutq.broker.keys import Keys
from rolloutq.broker.settings import BatchSettings, RedisSettings, WorkerSettings
from rolloutq.monitoring.metrics import sim_metrics, worker_metrics

CHUNK = {"action": np.zeros((1, 40, 28), np.float32)}


class _Handler(BatchHandler):
    def validate(self, obs: Any) -> str | None:
        return None

    def infer(self, batch: list[Any]) -> list[Any]:
        return [CHUNK for _ in batch]


def _obs(kind: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "400KB":
        return {"video.ego_view": rng.integers(0, 255, (1, 2, 256, 256, 3), dtype=np.uint8),
                "state.left_arm": rng.standard_normal((1, 1, 7)).astype(np.float32)}
    return {"state.joints": rng.standard_normal((1, 1, 200)).astype(np.float32)}


async def _round(url: str, backend: str, rollouts: int, seconds: float, obs: dict, tag: str) -> list[float]:
    rs = RedisSettings(url=url)
    wm = worker_metrics("bench", f"w-{tag}", backend)
    consumer = StreamConsumer(connect_async(rs), _Handler(), WorkerSettings(
        policy="bench", worker_id=f"w-{tag}", block_ms=20, batch=BatchSettings(max_batch_size=32, max_wait_ms=1.0)),
        Keys(), metrics=wm)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    r = connect_async(rs)
    client = PolicyClient(r, "bench")
    sms = [sim_metrics(f"s{i}-{tag}", "bench", backend) for i in range(rollouts)]
    out: list[float] = []
    deadline = time.monotonic() + seconds

    async def rollout(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            await client.act(f"r{i}-{tag}", obs)
            rt = time.perf_counter() - t0
            sms[i].on_round_trip(rt)
            sms[i].on_steps(8)
            if n:  # the first call of a rollout includes connection set-up
                out.append(rt * 1000)
            n += 1

    await asyncio.gather(*[rollout(i) for i in range(rollouts)])
    stop.set()
    await asyncio.wait_for(task, 30)
    await r.aclose()
    await consumer.redis.aclose()
    return out


def _pct(v: list[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _main(a: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with EmbeddedRedis() as server:
        for kind in a.obs:
            obs = _obs(kind)
            for k in a.rollouts:
                res: dict[str, list[float]] = {"off": [], "prometheus": []}
                for i in range(a.rounds):
                    for backend in (("off", "prometheus") if i % 2 == 0 else ("prometheus", "off")):
                        res[backend] += await _round(server.url, backend, k, a.seconds, obs, f"{kind}{k}{i}{backend}")
                for backend, v in res.items():
                    rows.append({"obs": kind, "rollouts": k, "metrics": backend, "calls": len(v),
                                 "p50_ms": _pct(v, 0.5), "p99_ms": _pct(v, 0.99), "mean_ms": statistics.fmean(v)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--obs", nargs="+", default=["1KB", "400KB"], choices=["1KB", "400KB"])
    ap.add_argument("--rounds", type=int, default=6, help="Rounds per mode (alternating).")
    ap.add_argument("--seconds", type=float, default=3.0, help="Length of one round.")
    a = ap.parse_args(argv)
    rows = asyncio.run(_main(a))
    print(f"{'obs':<7}{'rollouts':>9}{'metrics':>12}{'calls':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for r in rows:
        print(f"{r['obs']:<7}{r['rollouts']:>9}{r['metrics']:>12}{r['calls']:>8}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}")


if __name__ == "__main__":
    main()
