"""Episode videos: one frame per env step at the simulator's own rate, and recording one never
changes the episode (the G1 observation's two-frame stack is kept apart from the video's frames)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
from PIL import Image
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.settings import ClientSettings, RedisSettings
from rolloutq.policy_workers.backends import make_backend
from rolloutq.policy_workers.backends._gr00t_layout import REAL_G1
from rolloutq.sim_workers.runner import EnvSlot, run_episode
from rolloutq.sim_workers.tasks import make_task, task_class
from rolloutq.sim_workers.worker import encode_gif

from tests.sim_workers.test_outcomes import _worker


async def _episodes(redis_url: str, task: str, record: list[bool], **options) -> list[tuple[object, list]]:
    redis = RedisSettings(url=redis_url)
    stop = asyncio.Event()
    dims = getattr(task_class(task), "layout", {}).get("action_dims") or dict(REAL_G1.action)
    backend = make_backend("null", action_dims=dims)
    worker = asyncio.create_task(_worker(redis, backend).run(stop))
    r = connect_async(redis)
    out = []
    try:
        client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=20))
        await client.metadata(wait_s=30)
        for i, video in enumerate(record):
            slot = EnvSlot(make_task(task, **options), f"v{i}")
            frames: list[np.ndarray] = []
            try:
                rec = await run_episode(slot, client, episode=0, seed=5, rollout_id=f"v{i}", action_horizon=8,
                                        on_frame=frames.append if video else None)
            finally:
                await slot.close()
            out.append((rec, frames))
    finally:
        stop.set()
        await worker
        await r.aclose()
    return out


def test_a_video_has_a_frame_per_step_at_the_simulators_rate(redis_url):
    ((rec, frames),) = asyncio.run(_episodes(redis_url, "reach", [True], max_steps=20, image_size=64))
    assert rec.steps == 20 and len(frames) == rec.steps + 1  # the reset, then every step
    assert sum(not np.array_equal(a, b) for a, b in zip(frames, frames[1:], strict=False)) >= 10  # it moves
    gif = Image.open(io.BytesIO(encode_gif(frames, make_task("reach").info.fps)))
    assert gif.n_frames == len(frames) and gif.info["duration"] == 20  # 50 env steps per simulated second


def test_recording_a_g1_episode_does_not_change_it(redis_url):
    (plain, _), (recorded, frames) = asyncio.run(
        _episodes(redis_url, "g1-pickplace", [False, True], max_steps=24))
    assert plain.outcome == "failure" and plain.steps == 24 and len(frames) == recorded.steps + 1
    assert (recorded.steps, recorded.episode_return, recorded.outcome) == (
        plain.steps, plain.episode_return, plain.outcome)
    assert make_task("g1-pickplace").info.fps == 25.0
