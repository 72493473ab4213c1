"""The closed loop for one episode: observe, ask the policy when the chunk is used up, step.

Simulator work (reset, render, step) runs on the environment's own thread (MuJoCo renderers are
bound to the thread that made them), so one process keeps many environments' requests in flight.
Infrastructure problems (no reply in time, Redis gone, an error reply) end the episode with
status `infra_error`: they are never counted as policy failures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from broker.client import ActionChunker, PolicyClient
from broker.errors import BrokerError
from sim_workers.base import SimAdapter, StepResult


@dataclass
class EpisodeRecord:
    episode: int
    seed: int
    status: str  # "ok" or "infra_error"
    success: bool = False
    episode_return: float = 0.0
    steps: int = 0
    wall_s: float = 0.0
    policy_calls: int = 0
    round_trip_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    sim: str = ""
    attempt: int = 1
    error: str = ""
    started_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["round_trip_ms"] = [round(x, 3) for x in self.round_trip_ms]
        return d


class EnvSlot:
    """An environment and the one thread it is driven from."""

    def __init__(self, env: SimAdapter, name: str) -> None:
        self.env = env
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"env-{name}")

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def close(self) -> None:
        await self.call(self.env.close)
        self.executor.shutdown(wait=True)


def _step(env: SimAdapter, chunk: dict, t: int) -> StepResult:
    return env.step(env.action_from_chunk(chunk, t))


async def run_episode(
    slot: EnvSlot,
    client: PolicyClient,
    episode: int,
    seed: int,
    rollout_id: str,
    action_horizon: int,
    on_frame: Callable[[np.ndarray], None] | None = None,
    on_steps: Callable[[int], None] | None = None,
) -> EpisodeRecord:
    env = slot.env
    record = EpisodeRecord(episode=episode, seed=seed, status="ok", started_at=time.time())
    t0 = time.perf_counter()
    chunker = ActionChunker(action_horizon)
    try:
        await slot.call(env.reset, seed)
        while True:
            if chunker.needs_query():
                obs = await slot.call(env.observe)
                if on_frame is not None and (frame := env.frame()) is not None:
                    on_frame(frame)
                res = await client.act(rollout_id, obs, steps=action_horizon)  # only the steps it will execute
                chunker.set_chunk(res.chunk)
                record.policy_calls += 1
                record.round_trip_ms.append(res.round_trip_ms)
                record.batch_sizes.append(res.batch)
            chunk, t = chunker.next()
            result: StepResult = await slot.call(_step, env, chunk, t)
            record.steps += 1
            record.episode_return += float(result.reward)
            if on_steps is not None:
                on_steps(1)
            if result.done:
                record.success = bool(result.success)
                break
    except BrokerError as e:
        record.status = "infra_error"
        record.error = str(e)[:500]
    except Exception as e:  # a simulator or adapter bug: record it, keep the worker alive
        record.status = "infra_error"
        record.error = f"simulator error: {type(e).__name__}: {e}"[:500]
    finally:
        client.forget(rollout_id)
    record.wall_s = time.perf_counter() - t0
    return record
