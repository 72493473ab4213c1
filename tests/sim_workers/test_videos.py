"""Episode videos: one frame per env step at the simulator's own rate, and recording one never
changes the episode (the G1 observation's two-frame stack is kept apart from the video's frames);
the same from a vectorised simulator through a sweep, and none from one without the video hooks."""

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
from rolloutq.sim_workers.base import Chunk, Obs, StepResult, TaskInfo
from rolloutq.sim_workers.runner import EnvSlot, run_episode
from rolloutq.sim_workers.tasks import make_task, task_class
from rolloutq.sim_workers.vector import SingleEnvView, VectorSimAdapter
from rolloutq.sim_workers.worker import encode_gif

from tests.inprocess import run_sweep
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


class Dots(VectorSimAdapter):
    """A vectorised test simulator: env i is a dot at x = seed % 5 that drifts one pixel right per
    step (plus its action); it succeeds on reaching x = 15, else fails after 12 steps. Its video
    frame is the dot drawn at x."""

    info = TaskInfo(name="dots", instruction="drift right", max_steps=12, fps=20.0)
    layout = {"action_dims": {"action": 1}}
    vectorize_by_default = True

    def __init__(self, num_envs: int = 1, **_: object) -> None:
        self.num_envs = num_envs
        self.x = np.zeros(num_envs)
        self.steps = np.zeros(num_envs, np.int64)

    def reset(self, env_ids: list[int], seeds: list[int]) -> None:
        for i, seed in zip(env_ids, seeds, strict=True):
            self.x[i], self.steps[i] = seed % 5, 0

    def observe(self, env_ids: list[int]) -> list[Obs]:
        return [{"state.x": np.full((1, 1, 1), self.x[i], np.float32)} for i in env_ids]

    def step(self, actions: np.ndarray) -> list[StepResult]:
        self.x += 1 + actions[:, 0]
        self.steps += 1
        return [StepResult(reward=float(self.x[i]), done=bool(self.x[i] >= 15 or self.steps[i] >= 12),
                           success=bool(self.x[i] >= 15)) for i in range(self.num_envs)]

    def action_from_chunk(self, env_id: int, chunk: Chunk, t: int) -> np.ndarray:
        return chunk["action"][0, t]

    def idle_action(self, env_id: int) -> np.ndarray:
        return np.zeros(1, np.float32)

    def video_state(self, env_id: int) -> float:
        return float(self.x[env_id])

    def video_frame(self, env_id: int, state: float) -> np.ndarray:
        image = np.zeros((4, 32, 3), np.uint8)
        image[:, int(state)] = 255
        return image


class BlindDots(Dots):
    """`Dots` without the video hooks."""

    video_state = VectorSimAdapter.video_state
    video_frame = VectorSimAdapter.video_frame


def _dots_sweep(redis_url: str, task: str, video_episodes: int, run: str) -> tuple[list[dict], dict[int, bytes]]:
    videos: dict[int, bytes] = {}
    records = asyncio.run(run_sweep(redis_url, "null", {"action_dims": {"action": 1}}, f"{__name__}:{task}", {},
                                    seeds=[0, 4, 1, 3, 2], sims=1, envs=3, max_batch_size=4, run=run,
                                    action_horizon=4, video_episodes=video_episodes, videos=videos))
    records.pop()  # the worker's stats
    return sorted(records, key=lambda r: r["episode"]), videos


def test_a_vectorised_simulator_records_the_first_episodes_with_a_frame_per_step(redis_url):
    records, videos = _dots_sweep(redis_url, "Dots", 3, "with")
    plain, none = _dots_sweep(redis_url, "Dots", 0, "without")
    assert none == {}
    outcome = [(r["episode"], r["seed"], r["outcome"], r["steps"], r["episode_return"]) for r in records]
    assert outcome == [(r["episode"], r["seed"], r["outcome"], r["steps"], r["episode_return"]) for r in plain]
    assert [(r["outcome"], r["steps"]) for r in records] == [
        ("failure", 12), ("success", 11), ("failure", 12), ("success", 12), ("failure", 12)]
    assert len({r["sim"] for r in records}) == 1  # one vectorised simulator of 3 envs
    assert sorted(videos) == [0, 1, 2]  # the first 3 episodes by index, whichever env ran them
    for r in records[:3]:
        gif = Image.open(io.BytesIO(videos[r["episode"]]))
        assert gif.n_frames == r["steps"] + 1 and gif.info["duration"] == 50  # the reset, then each step; 20 fps
        dots = []
        for k in range(gif.n_frames):
            gif.seek(k)
            dots.append(int(np.asarray(gif.convert("RGB"))[0, :, 0].argmax()))
        assert dots == [r["seed"] % 5 + k for k in range(r["steps"] + 1)]  # frame k: the dot after step k


def test_a_vectorised_simulator_without_the_video_hooks_records_none(redis_url):
    records, videos = _dots_sweep(redis_url, "BlindDots", 3, "blind")
    assert videos == {} and len(records) == 5 and {r["outcome"] for r in records} == {"success", "failure"}


def test_a_one_env_view_draws_with_the_vectorised_hooks_or_else_with_frame():
    view = SingleEnvView(Dots())
    view.reset(3)
    view.step(np.zeros((1, 1), np.float32))
    assert int(view.video_frame(view.video_state())[0].argmax(axis=0)[0]) == 4  # the dot at 3, one step on
    blind = SingleEnvView(BlindDots())
    blind.reset(3)
    assert blind.video_frame(blind.video_state()) is None  # SimAdapter's default: its frame(), here none
