"""rolloutq's side of the comparison: rollouts driven the way `rolloutq sim-worker` drives them.

One simulator process hosts its rollouts as env slots (`EnvSlot`, each env on a thread of its own)
and runs each through the product's closed loop (`sim_workers.runner.run_episode`) with one
shared `PolicyClient`, one policy call per env step. `SlowSimAdapter` is the synthetic env, which
times itself (`env.SlowSim`); `TimedAdapter` wraps any other adapter (LIBERO's, in
`libero_compare`) to time the round trip the same way at the simulator and to hold the rollout at
the run's barrier after its reset. The policy worker is the
harness's `RolloutqWorker` (a `policy-worker` process behind its own redis-server) serving
`policy.CostModelPolicy`.

    python -m benchmarks.slow_sims.rolloutq_side --redis-url URL --run RUN --rollouts 0,1 --steps 80 \
        --seed 0 --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings
from rolloutq.sim_workers.base import Chunk, Obs, SimAdapter, StepResult, TaskInfo
from rolloutq.sim_workers.runner import EnvSlot, run_episode

from benchmarks.harness.load import POLICY
from benchmarks.harness.model import PolicySpec
from benchmarks.harness.systems import RolloutqWorker, worker_settings
from benchmarks.slow_sims.env import INSTRUCTION, Barrier, RolloutLog, SlowSim
from benchmarks.slow_sims.policy import NAME as POLICY_BACKEND

SYSTEM = "rolloutq"


class SlowSimAdapter(SimAdapter):
    """`env.SlowSim` in rolloutq's flat wire layout; the sim times itself and waits at the barrier."""

    def __init__(self, rollout: int, steps: int, seed: int, out_dir: str) -> None:
        self.sim = SlowSim(SYSTEM, rollout, steps, seed, out_dir)
        self.log = self.sim.log
        self.info = TaskInfo(name="slow-sim", instruction=INSTRUCTION, max_steps=steps)

    def reset(self, seed: int) -> None:
        self.sim.start()

    def observe(self) -> Obs:
        frame, state = self.sim.observe()
        return {"video.frame": frame[None], "state.vec": state[None],
                "annotation.human.task_description": [[INSTRUCTION]]}

    def step(self, action: np.ndarray) -> StepResult:
        done = self.sim.step(action)
        return StepResult(reward=0.0, done=done, success=False)

    def action_from_chunk(self, chunk: Chunk, t: int) -> np.ndarray:
        return np.asarray(chunk["action"])[0, t]


class TimedAdapter(SimAdapter):
    """Any adapter, timed at the simulator (end of `observe` to start of `step`) and stopped after
    `steps` steps; it waits at the barrier once its reset is done."""

    def __init__(self, inner: SimAdapter, rollout: int, steps: int, out_dir: str) -> None:
        self.inner, self.steps, self.out_dir = inner, steps, out_dir
        self.info = inner.info
        self.log = RolloutLog(SYSTEM, rollout, 0.0)

    def reset(self, seed: int) -> None:
        self.inner.reset(seed)
        Barrier(self.out_dir).arrive(self.log.rollout)

    def observe(self) -> Obs:
        obs = self.inner.observe()
        self.log.observed()
        return obs

    def step(self, action: np.ndarray) -> StepResult:
        self.log.applied()
        result = self.inner.step(action)
        self.log.stepped()
        if self.log.steps >= self.steps:
            result.done = True
        return result

    def action_from_chunk(self, chunk: Chunk, t: int) -> np.ndarray:
        return self.inner.action_from_chunk(chunk, t)

    def close(self) -> None:
        self.inner.close()


async def run_rollouts(redis_url: str, run: str, adapters: dict[int, Any], out_dir: str) -> None:
    """Every adapter's rollout to its end, concurrently; each writes its log into `out_dir`."""
    r = connect_async(RedisSettings(url=redis_url))
    client = PolicyClient(r, POLICY, settings=ClientSettings(reply_timeout_s=120, deadline_s=300))
    slots = {i: EnvSlot(a, f"r{i}") for i, a in adapters.items()}

    async def one(i: int) -> None:
        record = await run_episode(slots[i], client, episode=i, seed=i, rollout_id=f"{run}-r{i}", action_horizon=1)
        if record.outcome not in ("success", "failure"):
            raise RuntimeError(f"rollout {i} ended {record.outcome} ({record.reason}): {record.error}")
        log: RolloutLog = adapters[i].log
        log.batch = list(record.batch_sizes)
        log.write(out_dir)

    try:
        await asyncio.gather(*(one(i) for i in adapters))
    finally:
        for slot in slots.values():
            await slot.close()
        await r.aclose()


def start_worker(max_batch_size: int, max_wait_ms: float, redis_server: str | None = None,
                 options: dict[str, Any] | None = None) -> RolloutqWorker:
    """A `policy-worker` process serving the cost model behind a fresh redis-server; started."""
    spec = PolicySpec(POLICY_BACKEND, dict(options or {}), {})

    def settings_for(url: str) -> Any:
        return worker_settings(spec, False, {}, url, max_batch_size, max_wait_ms)

    worker = RolloutqWorker(settings_for, "plain", gpus=0, redis_server=redis_server)
    worker.start(timeout_s=120)
    return worker


def knobs(max_batch_size: int, max_wait_ms: float) -> dict[str, Any]:
    """rolloutq's batching settings as the worker gets them (`BatchSettings`)."""
    return {"batcher": "rolloutq.broker.batcher (the consumer's dispatch rule)",
            **asdict(BatchSettings(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms))}


def main(make: Callable[[int, argparse.Namespace], SimAdapter] | None = None, argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="rolloutq simulator process for benchmarks.slow_sims")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--run", required=True, help="unique per run: rollout ids are RUN-rI")
    p.add_argument("--rollouts", required=True, help="comma-separated rollout indices this process hosts")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--option", action="append", default=[], help="adapter option key=value (LIBERO)")
    a = p.parse_args(argv)
    a.options = dict(o.split("=", 1) for o in a.option)
    ids = [int(x) for x in a.rollouts.split(",")]
    build = make or (lambda i, args: SlowSimAdapter(i, args.steps, args.seed, args.out))
    asyncio.run(run_rollouts(a.redis_url, a.run, {i: build(i, a) for i in ids}, a.out))


if __name__ == "__main__":
    main()
