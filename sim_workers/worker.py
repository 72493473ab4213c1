"""A simulator worker: K environments in one process, taking episodes from a sweep.

It reads the sweep's config from Redis (policy, task, action horizon), builds K environments of
the task, and runs one episode per environment at a time, so K requests are in flight at once.
Tasks with a `VectorAdapter` (Isaac Lab, LIBERO) run as one vectorised simulator of K envs instead
(`rolloutq.sim_workers.vector.run_vector`).
Each episode is leased; the lease is renewed while it runs, and the result and the lease's end
are written in one step. The same class runs inside a Ray actor (`rolloutq.sim_workers.actor`) and as the
plain `rolloutq sim-worker` process, which is how external machines join a sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from rolloutq.broker.client import PolicyClient, fetch_metadata
from rolloutq.broker.connection import REDIS_DOWN, connect_async
from rolloutq.broker.keys import Keys
from rolloutq.broker.settings import ClientSettings, RedisSettings
from rolloutq.broker.sweep import SweepQueue
from rolloutq.sim_workers.runner import EnvSlot, EpisodeRecord, run_episode
from rolloutq.sim_workers.tasks import make_task, vector_class
from rolloutq.sim_workers.vector import run_vector

log = logging.getLogger("rolloutq.sim")


class SimMetrics(Protocol):
    def on_round_trip(self, seconds: float) -> None: ...

    def on_steps(self, n: int) -> None: ...

    def on_episode(self, outcome: str) -> None: ...


class _NoMetrics:
    def on_round_trip(self, seconds: float) -> None:
        pass

    def on_steps(self, n: int) -> None:
        pass

    def on_episode(self, outcome: str) -> None:
        pass


@dataclass
class SimWorkerSettings:
    run: str
    redis: RedisSettings = field(default_factory=RedisSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    envs: int = 4
    sim_id: str = ""
    wait_for_sweep_s: float = 60.0
    exit_when_drained: bool = False
    """Leave once the sweep has nothing left to take and no episode is leased by any simulator
    (plain processes); Ray actors are stopped by the controller instead."""


RUNNER_OPTIONS = ("vectorized", "rows_per_request")
"""Task options for how the simulator runs its envs, not for building them."""


def task_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The sweep's task options that go to the task's adapter."""
    return {k: v for k, v in config.get("task_options", {}).items() if k not in RUNNER_OPTIONS}


def vector_adapter_class(task: str, options: dict[str, Any]) -> type | None:
    """The task's vectorised adapter when the sweep should vectorise: the task option `vectorized`,
    else the class's own `vectorize_by_default` (Isaac Lab: yes; gymnasium: no)."""
    cls = vector_class(task)
    if cls is None:
        return None
    return cls if options.get("vectorized", getattr(cls, "vectorize_by_default", False)) else None


def encode_gif(frames: list[np.ndarray], fps: float) -> bytes:
    """An episode's video: one frame per env step, played at the simulator's rate (`TaskInfo.fps`;
    GIF delays are whole centiseconds, so 25 fps plays exactly, 50 fps as 20 ms frames)."""
    import imageio.v2 as imageio

    buf = io.BytesIO()
    delay_ms = max(20, round(100 / fps) * 10)  # browsers play delays under 20 ms at 100 ms
    imageio.mimwrite(buf, [np.asarray(f) for f in frames], format="GIF", duration=delay_ms, loop=0)
    return buf.getvalue()


class SimWorker:
    def __init__(self, settings: SimWorkerSettings, metrics: SimMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or _NoMetrics()
        self.sim_id = settings.sim_id or f"sim-{socket.gethostname()}-{os.getpid()}"
        self.keys = Keys(settings.redis.namespace)
        self.running: dict[int, int] = {}  # slot -> episode
        self.tokens: dict[int, str] = {}  # episode -> the lease token its spec carried (finish and release need it)
        self.done: list[EpisodeRecord] = []
        self.steps = 0
        self.released = 0
        self._slots_task: asyncio.Task | None = None
        self.action_schema: dict[str, Any] | None = None
        """The policy's published action schema: every chunk is checked against it before a step."""
        self._release = False

    async def run(self, stop: asyncio.Event | None = None) -> dict[str, Any]:
        stop = stop or asyncio.Event()
        s = self.settings
        r = connect_async(s.redis)
        slots: list[EnvSlot] = []
        try:
            queue = SweepQueue(r, s.run, self.keys)
            config = await self._wait_config(queue, stop)
            if config is None:
                return self.summary()
            client = PolicyClient(r, config["policy"], self.keys, s.client, shards=int(config.get("shards", 1)))
            meta = await fetch_metadata(r, self.keys, config["policy"], wait_s=s.wait_for_sweep_s)
            self.action_schema = meta.get("action_schema")
            lease_ms = await queue.lease_ms()
            vector_cls = vector_adapter_class(config["task"], config.get("task_options", {}))
            if vector_cls is not None:
                renew = asyncio.create_task(self._renew(queue, lease_ms, stop))
                await self._run_vector(vector_cls, queue, client, config, lease_ms, stop)
                renew.cancel()
                return self.summary()
            if config.get("task_options", {}).get("rows_per_request"):
                log.warning("sim %s: rows_per_request applies to vectorized simulators (task option vectorized=true); "
                            "this task runs one env per slot, each sending its own requests", self.sim_id)
            for i in range(s.envs):
                slot = EnvSlot(make_task(config["task"], **task_kwargs(config)), f"{self.sim_id}-{i}")
                slots.append(slot)
            renew = asyncio.create_task(self._renew(queue, lease_ms, stop))
            self._slots_task = asyncio.ensure_future(asyncio.gather(
                *[self._slot(i, slot, queue, client, config, lease_ms, stop) for i, slot in enumerate(slots)]))
            try:
                await self._slots_task
            except asyncio.CancelledError:
                if not self._release:
                    raise
                # Scaled down: hand the unfinished episodes back now instead of letting leases expire.
                self.released = await queue.release(self.sim_id, list(self.running.values()), self.tokens)
                log.info("sim %s: released %d unfinished episode(s)", self.sim_id, self.released)
                self.running.clear()
            renew.cancel()
        finally:
            for slot in slots:
                with contextlib.suppress(Exception):
                    await slot.close()
            await r.aclose()
        return self.summary()

    async def _wait_config(self, queue: SweepQueue, stop: asyncio.Event) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.wait_for_sweep_s
        while not stop.is_set():
            config = await queue.config()
            if config is not None:
                return config
            if loop.time() > deadline:
                raise TimeoutError(f"sweep {self.settings.run!r} not found in Redis: start `rolloutq eval` first, "
                                   "or check --run, --redis-url and --namespace")
            await asyncio.sleep(0.2)
        return None

    async def _renew(self, queue: SweepQueue, lease_ms: int, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(lease_ms / 3000)
            with contextlib.suppress(Exception):
                await queue.renew(self.sim_id, list(self.running.values()), lease_ms)

    async def _retry(self, op: Callable[[], Awaitable[Any]], stop: asyncio.Event) -> Any:
        """Run a sweep-queue operation, waiting out a Redis restart (backoff with jitter) unless stopping."""
        delay = 0.1
        while True:
            try:
                return await op()
            except REDIS_DOWN as e:
                if stop.is_set():
                    raise
                log.warning("sim %s: Redis unreachable (%s); retrying in %.1fs", self.sim_id, e, delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def _slot(self, i: int, slot: EnvSlot, queue: SweepQueue, client: PolicyClient,
                    config: dict[str, Any], lease_ms: int, stop: asyncio.Event) -> None:
        video_episodes = int(config.get("video_episodes", 0))
        while not stop.is_set():
            if await self._retry(queue.stopped, stop):
                return
            spec = await self._retry(lambda: queue.take(self.sim_id, lease_ms), stop)
            if spec is None:
                if self.settings.exit_when_drained and not self.running and await self._drained(queue, stop):
                    return
                await asyncio.sleep(0.2)
                continue
            self.running[i] = spec.episode
            self.tokens[spec.episode] = spec.token
            frames: list[np.ndarray] = []
            gen = f".g{spec.gen}" if spec.gen else ""
            episode = asyncio.create_task(run_episode(
                slot, client, spec.episode, spec.seed,
                rollout_id=f"{self.settings.run}.e{spec.episode}.a{spec.attempt}{gen}",
                action_horizon=int(config.get("action_horizon", 8)),
                on_frame=frames.append if spec.episode < video_episodes else None,
                on_steps=self._count_steps,
                action_schema=self.action_schema,
            ))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({episode, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not episode.done():
                # Graceful shutdown: abandon the episode between two awaits (the env thread finishes the
                # step it is in; a pending policy request is simply never read) and hand it back.
                episode.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await episode
                self.running.pop(i, None)
                with contextlib.suppress(*REDIS_DOWN):
                    await queue.release(self.sim_id, [spec.episode], {spec.episode: spec.token})
                log.info("sim %s: stopping; episode %d abandoned and handed back", self.sim_id, spec.episode)
                return
            record = episode.result()
            record.sim = self.sim_id
            record.attempt = spec.attempt
            for rt in record.round_trip_ms:
                self.metrics.on_round_trip(rt / 1000)
            self.metrics.on_episode(record.outcome)
            # off the event loop: encoding takes seconds, and the other slots' round trips wait on the loop
            video = await asyncio.to_thread(encode_gif, frames, slot.env.info.fps) if frames else b""
            accepted = await self._retry(
                lambda: queue.finish(spec.episode, spec.token, record.to_dict(), video), stop)  # noqa: B023
            self._not_accepted(record, accepted)
            self.running.pop(i, None)
            self.tokens.pop(spec.episode, None)
            self.done.append(record)

    async def _run_vector(self, vector_cls: type, queue: SweepQueue, client: PolicyClient, config: dict[str, Any],
                          lease_ms: int, stop: asyncio.Event) -> None:
        """All `envs` environments in one vectorised simulator, fed from the sweep; the first
        `video_episodes` episodes with a video where the adapter has `video_state`/`video_frame`."""
        s = self.settings
        options = task_kwargs(config)
        rows = int(config.get("task_options", {}).get("rows_per_request", 0))  # docs/PROTOCOL.md §4.1
        pool = ThreadPoolExecutor(1, thread_name_prefix=f"{self.sim_id}-vec")
        loop = asyncio.get_running_loop()
        venv = await loop.run_in_executor(pool, lambda: vector_cls(num_envs=s.envs, **options))
        videos: dict[int, list[np.ndarray]] = {}  # episode -> its frames, from on_video until finish sends the GIF

        async def take() -> Any:
            if stop.is_set() or await queue.stopped():
                return None
            spec = await queue.take(self.sim_id, lease_ms)
            if spec is not None:
                self.running[spec.episode] = spec.episode
                self.tokens[spec.episode] = spec.token
            return spec

        def video(record: EpisodeRecord, frames: list[np.ndarray]) -> None:
            videos[record.episode] = frames  # encoded in `finish`, off the event loop

        async def finish(record: EpisodeRecord) -> None:
            record.sim = self.sim_id
            for rt in record.round_trip_ms:
                self.metrics.on_round_trip(rt / 1000)
            self.metrics.on_episode(record.outcome)
            frames = videos.pop(record.episode, None)
            gif = await asyncio.to_thread(encode_gif, frames, venv.info.fps) if frames else b""
            accepted = await queue.finish(record.episode, self.tokens.get(record.episode, ""), record.to_dict(), gif)
            self._not_accepted(record, accepted)
            self.running.pop(record.episode, None)
            self.tokens.pop(record.episode, None)
            self.done.append(record)

        try:
            while not stop.is_set() and not await queue.stopped():
                records = await run_vector(venv, client, take, int(config.get("action_horizon", 8)),
                                           rollout_prefix=s.run, on_steps=self._count_steps, on_episode=finish,
                                           close=False, executor=pool, rows_per_request=rows,
                                           action_schema=self.action_schema,
                                           video_episodes=int(config.get("video_episodes", 0)), on_video=video)
                if not records:
                    if s.exit_when_drained and await self._drained(queue, stop):
                        return
                    await asyncio.sleep(0.2)
        finally:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(pool, venv.close)
            pool.shutdown(wait=True)

    def _not_accepted(self, record: EpisodeRecord, accepted: bool) -> None:
        if not accepted:
            log.warning("sim %s: the sweep did not take the result of episode %d attempt %d: its lease was lost "
                        "(it expired and the episode went to another simulator); moving on", self.sim_id,
                        record.episode, record.attempt)

    async def _drained(self, queue: SweepQueue, stop: asyncio.Event) -> bool:
        """Nothing left to take and no episode leased by anyone. While another simulator holds a
        lease we stay: if it died, the controller hands its episodes back when the lease expires,
        and someone has to be there to run them."""
        counts = await self._retry(queue.counts, stop)
        return counts["todo"] == 0 and counts["running"] == 0

    def release(self) -> None:
        """Stop now and hand unfinished episodes back to the sweep (`run` returns afterwards)."""
        self._release = True
        if self._slots_task is not None and not self._slots_task.done():
            self._slots_task.cancel()

    def _count_steps(self, n: int) -> None:
        self.steps += n
        self.metrics.on_steps(n)

    def summary(self) -> dict[str, Any]:
        return {"sim": self.sim_id, "episodes": len(self.done), "steps": self.steps,
                "successes": sum(r.success for r in self.done), "running": len(self.running),
                "released": self.released}
