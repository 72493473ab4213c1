"""Vectorised simulators: one process steps N environments together (Isaac Lab, mjlab, gymnasium
vector envs), and the runner keeps one policy request per environment in flight at once.

`VectorSimAdapter` is `SimAdapter` with an env index: every call names the environments it acts
on, and `step` advances all of them with one (N, action_dim) array, because a vectorised simulator
cannot step some envs and not others. `run_vector` is the closed loop: whenever some envs have used
up their action chunk, their observations go out together in one `PolicyClient.act_many` call (one
pipeline, so the policy worker's micro-batcher sees them together), then all N envs step. An env
whose episode ended takes the next episode spec (reset of that env alone); with none left it idles
on `idle_action` and its results are ignored. With `rows_per_request` set, those envs' observations
go instead as requests of up to that many rows each (docs/PROTOCOL.md §4.1; the policy's schema must
leave the leading dimension open, as the GR00T backend's does): one request costs the policy
worker one read, decode and reply for all its rows.

Episode results do not depend on N or on batching, provided the adapter resets an env from the
episode's seed alone (`reset(env_ids, seeds)`). Simulators that seed one RNG for all envs (Isaac
Lab, mjlab) say so in their docs; there, outcomes depend on which episodes share a process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
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
from rolloutq.broker.errors import BrokerError, ProtocolError
from rolloutq.broker.schema import row_keys
from rolloutq.broker.sweep import EpisodeSpec
from rolloutq.sim_workers.base import Chunk, Obs, SimAdapter, StepResult, TaskInfo
from rolloutq.sim_workers.errors import BadActionChunk, SimulatorFailed
from rolloutq.sim_workers.outcomes import ACTION_SCHEMA_MISMATCH, Outcome, check_chunk, classify, task_end
from rolloutq.sim_workers.runner import EpisodeRecord


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

    def close(self) -> None:
        self.venv.close()


def stack_rows(observations: list[Obs]) -> Obs:
    """Per-env observations (leading dimension 1, flat keys) as one observation of len(observations)
    rows: arrays concatenated, each text field one row per env."""
    out: dict[str, Any] = {}
    for key, first in observations[0].items():
        values = [o[key] for o in observations]
        if isinstance(first, np.ndarray):
            out[key] = np.concatenate(values)
        elif isinstance(first, str | list):
            out[key] = [row for v in values for row in ([[v]] if isinstance(v, str) else v)]
        else:
            raise ProtocolError(f"observation key {key!r} holds a {type(first).__name__}: only flat maps of "
                                "arrays and text go as rows; turn rows_per_request off for this simulator")
    return out


def split_rows(chunk: Chunk, n: int) -> list[Chunk]:
    """A chunk of n rows as n one-row chunks (what is not an array, e.g. a note, goes to each)."""
    for k, v in chunk.items():
        if isinstance(v, np.ndarray) and (not v.ndim or v.shape[0] != n):
            raise ProtocolError(f"the policy answered {n} rows with {k} of shape {v.shape}: it should have "
                                f"{n} rows; is its schema's open leading dimension really rows?")
    return [{k: v[j:j + 1] if isinstance(v, np.ndarray) else v for k, v in chunk.items()} for j in range(n)]


async def _act_rows(client: PolicyClient, rollout: str, observations: list[Obs], rows: int,
                    steps: int = 0) -> list[Any]:
    """`act_many`'s results (a result or an exception per env: a BrokerError, or BadActionChunk when
    the reply's rows do not fit), asked as requests of <= `rows` rows under one rollout id (one
    request in flight per group at a time, groups concurrently)."""
    groups = [observations[i:i + rows] for i in range(0, len(observations), rows)]

    async def one(g: int) -> list[Any]:
        try:
            obs = stack_rows(groups[g])
        except ProtocolError as e:  # the simulator's observations cannot go as rows
            raise SimulatorFailed(str(e)) from e
        try:
            res = await client.act(f"{rollout}.g{g}", obs, steps=steps)
        except BrokerError as e:
            return [e] * len(groups[g])
        try:
            chunks = split_rows(res.chunk, len(groups[g]))
        except ProtocolError as e:  # the policy answered a different number of rows
            return [BadActionChunk(ACTION_SCHEMA_MISMATCH, str(e))] * len(groups[g])
        return [dataclasses.replace(res, chunk=chunk) for chunk in chunks]

    return [r for part in await asyncio.gather(*[one(g) for g in range(len(groups))]) for r in part]


@dataclass
class _Running:
    spec: EpisodeSpec
    record: EpisodeRecord
    chunker: ActionChunker
    rollout: str
    t0: float


Take = Callable[[], Awaitable[EpisodeSpec | None]]


class _VectorRun:
    """One `run_vector` call: which episode each env runs, and the four moves of a vector step
    (start episodes on free envs, ask the policy for the envs that are due, step all N, finish
    the episodes that ended)."""

    def __init__(self, venv: VectorSimAdapter, client: PolicyClient, take: Take, action_horizon: int,
                 rollout_prefix: str, pool: ThreadPoolExecutor, rows_per_request: int,
                 action_schema: dict[str, dict[str, Any]] | None, on_steps: Callable[[int], None] | None,
                 on_episode: Callable[[EpisodeRecord], Any] | None) -> None:
        self.venv, self.client, self.take, self.pool = venv, client, take, pool
        self.action_horizon, self.rollout_prefix = action_horizon, rollout_prefix
        self.rows_per_request, self.action_schema = rows_per_request, action_schema
        self.on_steps, self.on_episode = on_steps, on_episode
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
                record=EpisodeRecord(episode=s.episode, seed=s.seed, attempt=s.attempt, started_at=time.time()))

    async def ask_policy(self) -> None:
        """One observation per env whose chunk is used up, sent together; each reply fills its env's chunk."""
        need = [i for i, r in self.running.items() if r.chunker.needs_query()]
        if not need:
            return
        observations = await self.call(self.venv.observe, need)
        if self.rows_per_request:
            replies = await _act_rows(self.client, self.group_rollout, observations, self.rows_per_request,
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
        self.client.forget(run.rollout)
        self.done.append(run.record)
        if self.on_episode is not None and inspect.isawaitable(result := self.on_episode(run.record)):
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
    """
    if rows_per_request and not row_keys((await client.metadata()).get("observation_schema") or {}):
        raise ProtocolError("the policy's schema fixes the leading dimension at 1, so it takes one row per "
                            "request: set rows_per_request to 0 (the default) for it")
    pool = executor or ThreadPoolExecutor(1, thread_name_prefix="vec-env")
    run = _VectorRun(venv, client, _taker(episodes), action_horizon, rollout_prefix, pool, rows_per_request,
                     action_schema, on_steps, on_episode)
    try:
        await run.run(max_vector_steps)
    finally:
        run.forget_rollouts()
        if close:
            await run.loop.run_in_executor(pool, venv.close)
        if executor is None:
            pool.shutdown(wait=True)
    return run.done
