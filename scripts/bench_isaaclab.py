"""Env steps/s of an Isaac Lab 3.0 task through rolloutq, K sub-environments in one simulator process:
a real redis-server, a policy worker answering zero actions, one request of K rows per policy query
(`rows_per_request`), chunks of `--horizon` steps. Also the env alone (same steps and camera reads,
no policy, no Redis), to show what the wire costs.

    PYTHONPATH=. .venv-isaaclab/bin/python scripts/bench_isaaclab.py --envs 16 --steps 120 \\
        --asset-root .venv-isaaclab/assets

Kit-less on the CPU (Newton physics and renderer); the assets are stand-ins (make_isaaclab_assets.py).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import numpy as np
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.embedded import EmbeddedRedis
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
from rolloutq.broker.sweep import EpisodeSpec
from rolloutq.policy_workers.base import PolicyBackend, PolicyMetadata
from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings
from rolloutq.sim_workers.adapters.isaaclab import VectorAdapter
from rolloutq.sim_workers.vector import run_vector


class ZeroRows(PolicyBackend):
    """Zero actions for any number of rows; its observation schema is the task's, leading dimension open."""

    runs_inline = True

    def __init__(self, observation: dict[str, Any], action_dims: dict[str, int]) -> None:
        self.schema = {k: {"dtype": str(v.dtype), "shape": [-1, *v.shape[1:]]} for k, v in observation.items()
                       if isinstance(v, np.ndarray)}
        self.action_dims = action_dims
        self.rows: list[int] = []

    def load(self) -> None:
        pass

    def metadata(self) -> PolicyMetadata:
        return PolicyMetadata(model_id="zero-rows", observation_schema=self.schema, chunk_length=40, action_horizon=8,
                              action_schema={k: {"dtype": "float32", "shape": [-1, 40, d]}
                                             for k, d in self.action_dims.items()})

    def infer(self, batch):
        rows = [next(v for v in obs.values() if isinstance(v, np.ndarray)).shape[0] for obs in batch]
        self.rows += rows
        return [{k: np.zeros((n, 40, d), np.float32) for k, d in self.action_dims.items()} for n in rows]


def rss_mib() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) // 1024


def env_alone(venv: VectorAdapter, steps: int, horizon: int, warmup: int) -> float:
    ids = list(range(venv.num_envs))
    venv.reset(ids, ids)
    idle = np.stack([venv.idle_action(i) for i in ids])
    for _ in range(warmup):  # first steps and renders of a new env are slower
        venv.observe(ids)
        venv.step(idle)
    t0 = time.perf_counter()
    for k in range(steps):
        if k % horizon == 0:
            venv.observe(ids)
        venv.step(idle)
    return venv.num_envs * steps / (time.perf_counter() - t0)


async def through_rolloutq(venv: VectorAdapter, redis_url: str, steps: int, horizon: int) -> tuple[float, list[int]]:
    backend = ZeroRows(venv.observe([0])[0], venv.action_dims)
    rs = RedisSettings(url=redis_url)
    worker = PolicyWorker(PolicyWorkerSettings(redis=rs, worker=WorkerSettings(
        policy="bench", batch=BatchSettings(max_batch_size=venv.num_envs, max_wait_ms=2))), backend=backend)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    r = connect_async(rs)
    client = PolicyClient(r, "bench", settings=ClientSettings(deadline_s=60))
    await client.metadata(wait_s=30)
    counted = [0]
    episodes = [EpisodeSpec(episode=i, seed=i) for i in range(10 * venv.num_envs)]
    try:
        t0 = time.perf_counter()
        await run_vector(venv, client, episodes, action_horizon=horizon, rollout_prefix="bench",
                                   max_vector_steps=steps, close=False, rows_per_request=venv.num_envs,
                                   on_steps=lambda n: counted.__setitem__(0, counted[0] + n))
        wall = time.perf_counter() - t0
    finally:
        stop.set()
        await task
        await r.aclose()
    return counted[0] / wall, backend.rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="Isaac-Cartpole-Camera")
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--steps", type=int, default=120, help="vector steps per measurement")
    p.add_argument("--horizon", type=int, default=8, help="env steps per policy query")
    p.add_argument("--warmup", type=int, default=16, help="unmeasured env steps first")
    p.add_argument("--asset-root", default=".venv-isaaclab/assets")
    a = p.parse_args()
    t0 = time.perf_counter()
    # episodes last longer than the measurement, so no env resets inside it
    venv = VectorAdapter(task=a.task, num_envs=a.envs, asset_root=a.asset_root, max_steps=a.steps + 1)
    print(f"{a.task}, {a.envs} envs: built in {time.perf_counter() - t0:.1f} s")
    server = EmbeddedRedis().start()
    try:
        alone = env_alone(venv, a.steps, a.horizon, a.warmup)
        rate, rows = asyncio.run(through_rolloutq(venv, server.url, a.steps, a.horizon))
    finally:
        venv.close()
        server.cleanup()
    print(f"{a.envs} envs x {a.steps} steps, a policy query every {a.horizon}: env alone {alone:.1f} env steps/s; "
          f"through rolloutq {rate:.1f} env steps/s (rows per request: {min(rows)}-{max(rows)}, {len(rows)} requests); "
          f"process RSS {rss_mib()} MiB")


if __name__ == "__main__":
    main()
