"""The closed loop for one episode: observe, ask the policy when the chunk is used up, step.

Simulator work (reset, render, step) runs on the environment's own thread (MuJoCo renderers are
bound to the thread that made them), so one process keeps many environments' requests in flight.
Every episode ends with an outcome (`rolloutq.sim_workers.outcomes`): the task's own success or failure, a
policy error (scored as a failure: the chunk is checked for NaN and against the policy's published
action schema before the simulator sees it), a simulator error, or an infrastructure problem.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rolloutq.broker.client import ActionChunker, PolicyClient
from rolloutq.sim_workers.base import SimAdapter, StepResult
from rolloutq.sim_workers.errors import SimulatorFailed
from rolloutq.sim_workers.outcomes import SUCCESS, Outcome, check_chunk, classify, task_end

log = logging.getLogger("rolloutq.sim")


@dataclass
class EpisodeRecord:
    episode: int
    seed: int
    outcome: str = ""
    """One of `rolloutq.sim_workers.outcomes.OUTCOMES`, set when the episode ends."""
    reason: str = ""
    """Machine-readable why for the error outcomes (`bad_action`, `sim_raised`, ...); "" otherwise."""
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

    def end(self, outcome: Outcome) -> None:
        self.outcome, self.reason = outcome.outcome, outcome.reason
        self.success = outcome.outcome == SUCCESS
        if outcome.error:
            self.error = outcome.error[:500]

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


async def _sim(slot: EnvSlot, fn: Callable[..., Any], *args: Any) -> Any:
    """A simulator call on the env's thread; whatever it raises is the simulator's failure."""
    try:
        return await slot.call(fn, *args)
    except Exception as e:
        raise SimulatorFailed(f"{type(e).__name__}: {e}") from e


def _draw_video(env: SimAdapter, states: list[Any], on_frame: Callable[[np.ndarray], None]) -> None:
    """The recorded episode's frames, drawn from its states once it is over (on the env's thread)."""
    for state in states:
        frame = env.video_frame(state)
        if frame is not None:
            on_frame(frame)


async def run_episode(
    slot: EnvSlot,
    client: PolicyClient,
    episode: int,
    seed: int,
    rollout_id: str,
    action_horizon: int,
    on_frame: Callable[[np.ndarray], None] | None = None,
    on_steps: Callable[[int], None] | None = None,
    action_schema: dict[str, dict[str, Any]] | None = None,
) -> EpisodeRecord:
    """One episode; never raises for a failure of the policy, the simulator or the broker (the
    record's outcome says which). `action_schema`: the policy's published one (its metadata), which
    every chunk must fit; None checks for non-finite values only."""
    env = slot.env
    record = EpisodeRecord(episode=episode, seed=seed, started_at=time.time())
    t0 = time.perf_counter()
    chunker = ActionChunker(action_horizon)
    video: list[Any] = []
    try:
        await _sim(slot, env.reset, seed)
        if on_frame is not None:  # a video: the scene after the reset, then after every env step
            video.append(await _sim(slot, env.video_state))
        while True:
            if chunker.needs_query():
                obs = await _sim(slot, env.observe)
                res = await client.act(rollout_id, obs, steps=action_horizon)  # only the steps it will execute
                record.policy_calls += 1
                record.round_trip_ms.append(res.round_trip_ms)
                record.batch_sizes.append(res.batch)
                check_chunk(res.chunk, action_schema)
                chunker.set_chunk(res.chunk)
            chunk, t = chunker.next()
            result: StepResult = await _sim(slot, _step, env, chunk, t)
            record.steps += 1
            record.episode_return += float(result.reward)
            if on_frame is not None:
                video.append(await _sim(slot, env.video_state))
            if on_steps is not None:
                on_steps(1)
            if result.done:
                record.end(task_end(bool(result.success)))
                break
    except Exception as e:  # the record says whose fault it was; the worker stays alive
        record.end(classify(e))
    finally:
        client.forget(rollout_id)
    record.wall_s = time.perf_counter() - t0
    if video and on_frame is not None:
        try:
            await slot.call(_draw_video, env, video, on_frame)
        except Exception as e:  # a video that cannot be drawn costs the video, not the episode
            log.warning("episode %d: its video could not be drawn: %s: %s", episode, type(e).__name__, e)
    return record
