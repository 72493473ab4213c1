"""Vectorised simulators: one process steps N environments together (Isaac Lab, mjlab, gymnasium
vector envs), and the runner keeps one policy request per environment in flight at once.

`VectorSimAdapter` is `SimAdapter` with an env index: every call names the environments it acts
on, and `step` advances all of them with one (N, action_dim) array, because a vectorised simulator
cannot step some envs and not others. `run_vector` is the closed loop: whenever some envs have used
up their action chunk, their observations go out together in one `PolicyClient.act_many` call (one
pipeline, so the policy worker's micro-batcher sees them together), then all N envs step. An env
whose episode ended takes the next episode spec (reset of that env alone); with none left it idles
on `idle_action` and its results are ignored. With `rows_per_request` set, those envs' observations
go instead as requests of up to that many rows each (`rolloutq.sim_workers.rows`; the policy's
schema must leave the leading dimension open, as the GR00T backend's does).

Episode results do not depend on N or on batching, provided the adapter resets an env from the
episode's seed alone (`reset(env_ids, seeds)`). Simulators that seed one RNG for all envs (Isaac
Lab, mjlab) say so in their docs; there, outcomes depend on which episodes share a process.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from rolloutq.broker.client import ActionChunker, PolicyClient
from rolloutq.broker.errors import ProtocolError
from rolloutq.broker.schema import row_keys
from rolloutq.broker.sweep import EpisodeSpec
from rolloutq.sim_workers.base import Chunk, Obs, SimAdapter, StepResult, TaskInfo
from rolloutq.sim_workers.errors import BadActionChunk, SimulatorFailed
from rolloutq.sim_workers.outcomes import Outcome, check_chunk, classify, task_end
from rolloutq.sim_workers.rows import act_rows
from rolloutq.sim_workers.runner import EpisodeRecord

log = logging.getLogger("rolloutq.sim")


class VectorSimAdapter(ABC):
    """N environments stepped together, seen from `run_vector`."""

    info: TaskInfo
    num_envs: int

    @abstractmethod
    def reset(self, env_ids: list[int], seeds: list[int]) -> None:
        """Reset the named envs (each from its seed where the simulator allows it)."""

    @abstractmethod
    def observe(self, env_ids: list[int]) -> list[Obs]:
        """One policy observation (leading batch dim 1) per named env; renders cameras if any."""

    @abstractmethod
    def step(self, actions: np.ndarray) -> list[StepResult]:
        """Advance all N envs with (N, action_dim) actions; one result per env."""

    @abstractmethod
    def action_from_chunk(self, env_id: int, chunk: Chunk, t: int) -> np.ndarray:
        """The (action_dim,) env action of step `t` of env `env_id`'s chunk."""

    @abstractmethod
    def idle_action(self, env_id: int) -> np.ndarray:
        """The (action_dim,) action of an env that runs no episode (hold still)."""

    def frame(self, env_id: int) -> np.ndarray | None:
        return None

    def video_state(self, env_id: int) -> Any:
        """Optional hook for episode videos, as `SimAdapter.video_state` for env `env_id`: what
        `video_frame` needs to draw that env's scene as it is now. Called after the reset and after
        every vector step of a recorded episode, on the simulator's thread, so it must be cheap (a
        copy of positions). Default None: the adapter records no video, and its runs have no GIFs."""
        return None

    def video_frame(self, env_id: int, state: Any) -> np.ndarray | None:
        """The (H, W, 3) uint8 image of env `env_id` in `state`, drawn when its episode has ended,
        between two vector steps. It may change env `env_id`'s own simulation (its next episode
        starts with a reset), never another env's: they are mid-episode."""
        return None

    def close(self) -> None:
        pass


class SingleEnvView(SimAdapter):
    """A one-env `VectorSimAdapter` as a plain `SimAdapter`, so vectorised simulators also run under
    the per-slot `SimWorker` (with `num_envs=1` per slot)."""

    def __init__(self, venv: VectorSimAdapter) -> None:
        if venv.num_envs != 1:
            raise ValueError(f"SingleEnvView needs num_envs=1, got {venv.num_envs}")
        self.venv = venv
        self.info = venv.info

    def reset(self, seed: int) -> None:
        self.venv.reset([0], [seed])

    def observe(self) -> Obs:
        return self.venv.observe([0])[0]

    def step(self, action: np.ndarray) -> StepResult:
        return self.venv.step(np.asarray(action).reshape(1, -1))[0]

    def action_from_chunk(self, chunk: Chunk, t: int) -> np.ndarray:
        return self.venv.action_from_chunk(0, chunk, t)

    def frame(self) -> np.ndarray | None:
        return self.venv.frame(0)

    def video_state(self) -> Any:
        """The vectorised adapter's video hook where it has one, else `SimAdapter`'s (`frame()`)."""
        state = self.venv.video_state(0)
        return _Drawn(self.frame()) if state is None else state

    def video_frame(self, state: Any) -> np.ndarray | None:
        return state.image if isinstance(state, _Drawn) else self.venv.video_frame(0, state)

    def close(self) -> None:
        self.venv.close()


@dataclass
class _Drawn:
    """A video frame that is already an image (`SingleEnvView` of an adapter without video hooks)."""

    image: np.ndarray | None


@dataclass
class _Running:
    spec: EpisodeSpec
    record: EpisodeRecord
    chunker: ActionChunker
    rollout: str
    t0: float
    video: list[Any] | None = None
    """The recorded episode's `video_state`s, one after the reset and one per step; None: no video."""


Take = Callable[[], Awaitable[EpisodeSpec | None]]


class _VectorRun:
    """One `run_vector` call: which episode each env runs, and the four moves of a vector step
    (start episodes on free envs, ask the policy for the envs that are due, step all N, finish
    the episodes that ended)."""

    def __init__(self, venv: VectorSimAdapter, client: PolicyClient, take: Take, action_horizon: int,
                 rollout_prefix: str, pool: ThreadPoolExecutor, rows_per_request: int,
                 action_schema: dict[str, dict[str, Any]] | None, on_steps: Callable[[int], None] | None,
                 on_episode: Callable[[EpisodeRecord], Any] | None, video_episodes: int,
                 on_video: Callable[[EpisodeRecord, list[np.ndarray]], Any] | None) -> None:
        self.venv, self.client, self.take, self.pool = venv, client, take, pool
        self.action_horizon, self.rollout_prefix = action_horizon, rollout_prefix
        self.rows_per_request, self.action_schema = rows_per_request, action_schema
        self.on_steps, self.on_episode = on_steps, on_episode
        self.video_episodes, self.on_video = (video_episodes, on_video) if on_video is not None else (0, None)
        self.group_rollout = f"{rollout_prefix}.rows.{secrets.token_hex(4)}"  # unique per call: no stale replies
        self.loop = asyncio.get_running_loop()
        self.running: dict[int, _Running] = {}
        self.done: list[EpisodeRecord] = []
        self.vector_steps = 0
        self.exhausted = False

    async def run(self, max_vector_steps: int | None) -> None:
        try:
            while True:
                await self.start_episodes()
                if not self.running or (max_vector_steps is not None and self.vector_steps >= max_vector_steps):
                    break
                await self.ask_policy()
                await self.step()
        except Exception as e:  # a simulator or adapter bug breaks all N envs: record it on every episode
            outcome = classify(e)
            for i in list(self.running):
                await self.finish(i, outcome)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn` on the simulator's own thread; what it raises is the simulator's failure."""
        try:
            return await self.loop.run_in_executor(self.pool, fn, *args)
        except Exception as e:
            raise SimulatorFailed(f"{type(e).__name__}: {e}") from e

    async def start_episodes(self) -> None:
        """Take the next specs for the free envs (until the source runs dry) and reset those envs."""
        starting, specs = [], []
        for i in range(self.venv.num_envs):
            if i in self.running or self.exhausted:
                continue
            spec = await self.take()
            if spec is None:
                self.exhausted = True
                break
            starting.append(i)
            specs.append(spec)
        if not starting:
            return
        await self.call(self.venv.reset, starting, [s.seed for s in specs])
        for i, s in zip(starting, specs, strict=True):
            self.running[i] = _Running(
                spec=s, chunker=ActionChunker(self.action_horizon), t0=time.perf_counter(),
                rollout=f"{self.rollout_prefix}.e{s.episode}.a{s.attempt}" + (f".g{s.gen}" if s.gen else ""),
                record=EpisodeRecord(episode=s.episode, seed=s.seed, attempt=s.attempt, started_at=time.time()),
                video=[] if s.episode < self.video_episodes else None)
        await self.record_video(starting)  # the scene after the reset

    async def record_video(self, env_ids: Iterable[int]) -> None:
        """A `video_state` of each of these envs that records its episode (an adapter without the hook
        returns None: no video)."""
        ids = [i for i in env_ids if self.running[i].video is not None]
        if not ids:
            return
        states = await self.call(lambda: [self.venv.video_state(i) for i in ids])
        for i, state in zip(ids, states, strict=True):
            run = self.running[i]
            if state is None:
                run.video = None
            else:
                run.video.append(state)

    async def ask_policy(self) -> None:
        """One observation per env whose chunk is used up, sent together; each reply fills its env's chunk."""
        need = [i for i, r in self.running.items() if r.chunker.needs_query()]
        if not need:
            return
        observations = await self.call(self.venv.observe, need)
        if self.rows_per_request:
            replies = await act_rows(self.client, self.group_rollout, observations, self.rows_per_request,
                                      self.action_horizon)
        else:
            replies = await self.client.act_many(
                [(self.running[i].rollout, o) for i, o in zip(need, observations, strict=True)],
                steps=self.action_horizon)
        for i, res in zip(need, replies, strict=True):
            await self._take_reply(i, res)

    async def _take_reply(self, i: int, res: Any) -> None:
        """A policy error (an error reply, or a chunk that is not a valid action) ends env `i`'s episode."""
        if isinstance(res, Exception):
            await self.finish(i, classify(res))
            return
        run = self.running[i]
        run.record.policy_calls += 1
        run.record.round_trip_ms.append(res.round_trip_ms)
        run.record.batch_sizes.append(res.batch)
        try:
            check_chunk(res.chunk, self.action_schema)
        except BadActionChunk as e:
            await self.finish(i, classify(e))
            return
        run.chunker.set_chunk(res.chunk)

    def actions(self) -> np.ndarray:
        """(N, action_dim): the next chunk step of each running env, `idle_action` for the others."""
        try:
            actions = []
            for i in range(self.venv.num_envs):
                if i in self.running:
                    chunk, t = self.running[i].chunker.next()
                    actions.append(np.asarray(self.venv.action_from_chunk(i, chunk, t), np.float32).reshape(-1))
                else:
                    actions.append(np.asarray(self.venv.idle_action(i), np.float32).reshape(-1))
        except Exception as e:
            raise SimulatorFailed(f"{type(e).__name__}: {e}") from e
        return np.stack(actions)

    async def step(self) -> None:
        """Step all N envs once; an env whose episode ended finishes it."""
        results: list[StepResult] = await self.call(self.venv.step, self.actions())
        self.vector_steps += 1
        await self.record_video(list(self.running))
        if self.on_steps is not None:
            self.on_steps(len(self.running))
        for i in list(self.running):
            run, res = self.running[i], results[i]
            run.record.steps += 1
            run.record.episode_return += float(res.reward)
            if res.done:
                await self.finish(i, task_end(bool(res.success)))

    async def finish(self, i: int, outcome: Outcome) -> None:
        run = self.running.pop(i)
        run.record.end(outcome)
        run.record.wall_s = time.perf_counter() - run.t0
        if run.video:
            await self.draw_video(i, run)
        self.client.forget(run.rollout)
        self.done.append(run.record)
        if self.on_episode is not None and inspect.isawaitable(result := self.on_episode(run.record)):
            await result

    async def draw_video(self, i: int, run: _Running) -> None:
        """The ended episode's frames, drawn from its states on the simulator's thread, to `on_video`."""
        def draw() -> list[np.ndarray]:
            return [f for state in run.video or [] if (f := self.venv.video_frame(i, state)) is not None]

        try:
            frames = await self.loop.run_in_executor(self.pool, draw)
        except Exception as e:  # a video that cannot be drawn costs the video, not the episode
            log.warning("episode %d: its video could not be drawn: %s: %s", run.spec.episode, type(e).__name__, e)
            return
        if frames and self.on_video is not None and inspect.isawaitable(result := self.on_video(run.record, frames)):
            await result

    def forget_rollouts(self) -> None:
        """The client's state of every rollout this run used (unfinished episodes and row groups)."""
        for run in self.running.values():
            self.client.forget(run.rollout)
        groups = -(-self.venv.num_envs // self.rows_per_request) if self.rows_per_request else 0
        for g in range(groups):
            self.client.forget(f"{self.group_rollout}.g{g}")


def _taker(episodes: Iterable[EpisodeSpec] | Take) -> Take:
    if callable(episodes):
        return episodes
    queue = deque(episodes)

    async def take() -> EpisodeSpec | None:
        return queue.popleft() if queue else None

    return take


async def run_vector(
    venv: VectorSimAdapter,
    client: PolicyClient,
    episodes: Iterable[EpisodeSpec] | Take,
    action_horizon: int,
    rollout_prefix: str = "vec",
    on_steps: Callable[[int], None] | None = None,
    on_episode: Callable[[EpisodeRecord], Any] | None = None,
    max_vector_steps: int | None = None,
    close: bool = True,
    executor: ThreadPoolExecutor | None = None,
    rows_per_request: int = 0,
    action_schema: dict[str, dict[str, Any]] | None = None,
    video_episodes: int = 0,
    on_video: Callable[[EpisodeRecord, list[np.ndarray]], Any] | None = None,
) -> list[EpisodeRecord]:
    """Run episodes on the N envs of `venv`, N requests in flight at once; records in finish order.

    `episodes` is a list of specs, or an async `take()` returning the next spec or None (a leased
    sweep: `SweepQueue.take`); after the first None no more episodes are taken, and the run ends
    when the busy envs finish (call again to pick up episodes re-queued later).
    `on_episode` may be async (e.g. `SweepQueue.finish`). A simulator exception ends every running
    episode as `sim_error` (never a policy failure) and the run; a policy error (an error reply, or a
    chunk with NaN or not fitting `action_schema`, the policy's published one) ends only its env's
    episode (`rolloutq.sim_workers.outcomes`). Simulator calls run on one thread of their
    own (renderers and GPU contexts are thread-bound). `max_vector_steps` stops early (tests);
    unfinished episodes are then dropped. `close` closes `venv` at the end, on its own thread.
    `executor`: the one-thread pool `venv` was built on (kept open); by default a new one.
    `rows_per_request`: send the envs that ask at once as requests of up to that many rows (0: one
    request per env); refused up front with `ProtocolError` if the policy does not take rows.
    `video_episodes`, `on_video`: episodes with an index below `video_episodes` record a video (the
    adapter's `video_state`, after the reset and after every step; none if the adapter has no such
    hook), drawn with `video_frame` when the episode ends and passed as `on_video(record, frames)`
    (may be async) just before `on_episode(record)`.
    """
    if rows_per_request and not row_keys((await client.metadata()).get("observation_schema") or {}):
        raise ProtocolError("the policy's schema fixes the leading dimension at 1, so it takes one row per "
                            "request: set rows_per_request to 0 (the default) for it")
    pool = executor or ThreadPoolExecutor(1, thread_name_prefix="vec-env")
    run = _VectorRun(venv, client, _taker(episodes), action_horizon, rollout_prefix, pool, rows_per_request,
                     action_schema, on_steps, on_episode, video_episodes, on_video)
    try:
        await run.run(max_vector_steps)
    finally:
        run.forget_rollouts()
        if close:
            await run.loop.run_in_executor(pool, venv.close)
        if executor is None:
            pool.shutdown(wait=True)
    return run.done
