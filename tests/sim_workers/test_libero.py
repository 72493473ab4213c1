"""The `libero` task: the standard protocol's pure parts everywhere; with LIBERO installed (its own
venv, scripts/install_libero.sh), a real env built offline, the benchmark's initial states, the
180-degree images, rendering only on demand, video frames that leave the episode as it was, short
episodes through a real redis-server and policy worker with two envs in one simulator process, and
`rolloutq eval --task libero` run as a user runs it (`--full`: Ray, the embedded Redis, the per-task
table in summary.json, the first episode's GIF).

Episodes are kept short (`max_steps`) and envs few: a LIBERO env takes ~8 s to build and ~1 GiB.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from rolloutq.sim_workers.tasks.libero import schema
from rolloutq.sim_workers.tasks.libero.protocol import (
    MAX_STEPS,
    EpisodeSlot,
    binarize_gripper,
    episode_slot,
    quat_to_axis_angle,
    rotate_180,
)

# --- the protocol, without a simulator ----------------------------------------------------------------


def test_seeds_map_to_tasks_and_initial_states_deterministically():
    ids = tuple(range(10))
    assert [episode_slot(s, ids) for s in (0, 1, 9, 10, 499, 500)] == [
        EpisodeSlot(0, 0), EpisodeSlot(1, 0), EpisodeSlot(9, 0), EpisodeSlot(0, 1), EpisodeSlot(9, 49),
        EpisodeSlot(0, 0)]
    assert [episode_slot(s, ids, "task-major") for s in (0, 49, 50, 499)] == [
        EpisodeSlot(0, 0), EpisodeSlot(0, 49), EpisodeSlot(1, 0), EpisodeSlot(9, 49)]
    for order in ("interleaved", "task-major"):  # the standard 500 episodes: every pair exactly once
        assert len({episode_slot(s, ids, order) for s in range(500)}) == 500
    assert episode_slot(3, (2, 7)) == EpisodeSlot(7, 1)
    with pytest.raises(ValueError, match="unknown episode order"):
        episode_slot(0, ids, "random")
    assert MAX_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                         "libero_90": 400}


def test_images_turn_half_round_gripper_binarises_and_quaternions_become_axis_angles():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(rotate_180(img), np.rot90(img, 2))
    assert binarize_gripper(np.array([1, 2, 3, 4, 5, 6, -0.01])).tolist() == [1, 2, 3, 4, 5, 6, -1]
    assert binarize_gripper(np.zeros(7))[-1] == 1.0  # 0 closes, as in every LIBERO harness
    np.testing.assert_allclose(quat_to_axis_angle([0, 0, 0, 1]), [0, 0, 0])
    half = np.sin(np.pi / 4)
    np.testing.assert_allclose(quat_to_axis_angle([0, 0, half, half]), [0, 0, np.pi / 2])
    chunk = {"action": np.tile(np.array([0.1, 0, 0, 0, 0, 0, 0.2], np.float32), (1, 8, 1))}
    assert schema.action_from_chunk(chunk, 7).tolist() == pytest.approx([0.1, 0, 0, 0, 0, 0, 1])
    with pytest.raises(KeyError, match="a LIBERO policy answers 'action'"):
        schema.action_from_chunk({"left_arm": np.zeros((1, 8, 7))}, 0)


def test_the_run_summary_has_a_table_per_task_scoring_only_scored_outcomes():
    from rolloutq.controller.results import group_lines, group_table, wilson_interval
    from rolloutq.sim_workers.tasks.libero.adapter import Adapter

    options = {"suite": "libero_spatial", "tasks": "0,1"}
    recs = [{"episode": e, "seed": e, "outcome": "success" if e % 2 == 0 else "failure"} for e in range(8)]
    recs.append({"episode": 8, "seed": 8, "outcome": "infra"})
    recs.append({"episode": 9, "seed": 9, "outcome": "success"})
    table = group_table(recs, lambda seed: Adapter.episode_group(seed, options))
    rows = table["groups"]
    assert list(rows) == ["task 0", "task 1"]  # interleaved: even seeds task 0, odd seeds task 1
    assert [(r["successes"], r["episodes"], r["unscored"]) for r in rows.values()] == [(4, 4, 1), (1, 5, 0)]
    assert table["mean_group_rate"] == pytest.approx(0.6)
    assert rows["task 0"]["success_ci95"] == [round(x, 4) for x in wilson_interval(4, 4)]
    text = "\n".join(group_lines(table))
    assert "(+1 unscored)" in text and "mean of the groups' rates: 0.600" in text


def test_the_task_is_found_without_libero_installed():
    from rolloutq.sim_workers.tasks import available, task_class
    from rolloutq.sim_workers.worker import vector_adapter_class

    assert "libero" in available()
    assert task_class("libero").layout["action_dims"] == {"action": 7}
    assert vector_adapter_class("libero", {}).__name__ == "VectorAdapter"  # vectorised by default
    assert vector_adapter_class("libero", {"vectorized": False}) is None


def test_a_missing_libero_says_how_to_install_it():
    try:
        import libero.libero  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("LIBERO is installed here")
    from rolloutq.sim_workers.tasks.libero.env import LiberoUnavailable, Suite

    with pytest.raises(LiberoUnavailable, match="install_libero.sh"):
        Suite("libero_spatial")


# --- a real LIBERO env ---------------------------------------------------------------------------------


@contextlib.contextmanager
def no_network():
    """Connections to anything but this host fail: the env must build from the installed wheels."""
    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"test: network access to {address} refused")
        return real(self, address)

    socket.socket.connect = connect
    try:
        yield
    finally:
        socket.socket.connect = real


@pytest.mark.slow
class TestRealEnv:
    @pytest.fixture(scope="class")
    def env(self):
        pytest.importorskip("libero.libero", reason="LIBERO is not installed in this interpreter: run "
                            "scripts/install_libero.sh and this test with .venv-libero/bin/python")
        from rolloutq.sim_workers.tasks.libero.env import LiberoEnv, Suite

        with no_network():
            t0 = time.perf_counter()
            suite = Suite("libero_spatial")
            env = LiberoEnv(suite, image_size=128, settle_steps=0)
            env.reset(EpisodeSlot(0, 3))
            print(f"\nlibero_spatial task 0: suite + env build + reset {time.perf_counter() - t0:.1f} s")
        yield env
        env.close()

    def test_the_initial_state_is_the_benchmarks(self, env):
        env.reset(EpisodeSlot(0, 3))  # settle_steps=0: the state right after the restore
        states = env.suite.init_states(0)
        assert states.shape[0] == 50
        np.testing.assert_array_equal(env.sim_state(), states[3])
        assert not np.array_equal(states[3], states[4])
        assert env.builds == 1  # a reset of the same task reuses the scene

    def test_the_first_image_is_rotated_and_rendering_on_demand_changes_nothing(self, env):
        env.reset(EpisodeSlot(0, 3))
        raw = env.observe()
        obs = schema.build_observation(raw, "x")
        assert obs["video.agentview"].shape == (1, 1, 128, 128, 3)
        np.testing.assert_array_equal(obs["video.agentview"][0, 0], raw["agentview_image"][::-1, ::-1])
        np.testing.assert_array_equal(obs["video.wrist"][0, 0], raw["robot0_eye_in_hand_image"][::-1, ::-1])
        assert not np.array_equal(obs["video.agentview"][0, 0], raw["agentview_image"])

        actions = [np.array([0.4, 0.2 * (-1) ** k, -0.3, 0, 0, 0.1, -1 if k < 4 else 1]) for k in range(8)]
        ours = []
        for a in actions:  # ours: robosuite samples, but the cameras render only in observe()
            env.step(a)
            ours.append(env.observe())
        ours_state = env.sim_state()
        env.reset(EpisodeSlot(0, 3))
        robosuite = env._env.env
        for name, sensor in env._cameras._real.items():  # robosuite's default: render at every sample
            robosuite.modify_observable(name, "sensor", sensor)
        theirs = [env._env.step(a)[0] for a in actions]
        np.testing.assert_array_equal(ours_state, env.sim_state())
        for k in (0, 3, 7):
            for name in (*schema.CAMERAS.values(), "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"):
                np.testing.assert_array_equal(ours[k][name], theirs[k][name], err_msg=f"step {k} {name}")
        assert not np.array_equal(ours[0]["agentview_image"], ours[7]["agentview_image"])  # the arm moved

    def test_video_frames_are_agent_views_of_each_step_and_drawing_them_changes_nothing(self, env):
        actions = [np.array([0.3, -0.2 * (-1) ** k, 0.2, 0.1, 0, 0, 1 if k > 2 else -1]) for k in range(8)]
        env.reset(EpisodeSlot(0, 3))
        states, frames = [env.video_state()], []
        first_image = env.observe()["agentview_image"]
        for a in actions:  # recorded, with a frame drawn after every step (the runner draws after the episode)
            env.step(a)
            states.append(env.video_state())
            frames.append(env.video_frame(states[-1]))
        recorded = (env.sim_state(), env.observe())
        np.testing.assert_array_equal(env.video_frame(states[0]), first_image)  # the restored state, as observed
        env.reset(EpisodeSlot(0, 3))
        for a in actions:  # the same steps, no video
            env.step(a)
        np.testing.assert_array_equal(recorded[0], env.sim_state())
        plain = env.observe()
        for name in (*schema.CAMERAS.values(), "robot0_eef_pos", "robot0_gripper_qpos"):
            np.testing.assert_array_equal(recorded[1][name], plain[name], err_msg=name)
        assert all(f.shape == (128, 128, 3) and f.dtype == np.uint8 for f in frames)
        assert sum(not np.array_equal(a, b) for a, b in zip(frames, frames[1:], strict=False)) == 7  # each step moved
        np.testing.assert_array_equal(env.video_frame(states[-1]), frames[-1])  # drawing is repeatable


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_episodes_through_redis_two_envs_in_one_simulator_end_at_the_step_limit(redis_url):
    pytest.importorskip("libero.libero", reason="LIBERO is not installed in this interpreter: run "
                        "scripts/install_libero.sh and this test with .venv-libero/bin/python")
    import asyncio

    from tests.inprocess import run_sweep

    t0 = time.perf_counter()
    videos: dict[int, bytes] = {}
    records = asyncio.run(run_sweep(
        redis_url, "null", {"action_dims": {"action": 7}}, "libero",
        {"suite": "libero_spatial", "tasks": [0, 1], "max_steps": 16, "image_size": 128},
        seeds=[0, 1, 2], sims=1, envs=2, max_batch_size=2, video_episodes=2, videos=videos,
        hold_ms=200))  # the deadline rule: the two envs' requests share a batch whatever the read timing
    wall = time.perf_counter() - t0
    stats = records.pop()["_worker"]
    print(f"\n3 episodes x 16 steps on 2 envs in one process: {wall:.1f} s wall; worker batches {stats.get('batches')}")
    assert sorted(r["seed"] for r in records) == [0, 1, 2]
    for r in records:  # the zero chunk never solves the task: the step limit ends it, scored as a failure
        assert (r["outcome"], r["reason"], r["steps"], r["policy_calls"]) == ("failure", "", 16, 2), r
    assert max(b for r in records for b in r["batch_sizes"]) == 2  # both envs asked in one batch
    assert len({r["sim"] for r in records}) == 1
    assert sorted(videos) == [0, 1]  # the first two episodes, one per env
    for data in videos.values():
        assert _gif_frames(data) == (17, (128, 128))  # the settled scene, then each of the 16 steps


def _gif_frames(data: bytes) -> tuple[int, tuple[int, int]]:
    """A GIF's frames at 20 fps (LIBERO's control rate), counted from its play time: Pillow merges
    identical consecutive frames into one of their summed duration (the null policy's arm holds
    still), and its size."""
    from PIL import Image

    gif = Image.open(io.BytesIO(data))
    durations = []
    for k in range(gif.n_frames):
        gif.seek(k)
        durations.append(gif.info["duration"])
    assert all(d % 50 == 0 for d in durations), durations
    return sum(durations) // 50, gif.size


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_rolloutq_eval_task_libero_through_ray_writes_the_per_task_table(tmp_path):
    """`python -m rolloutq.controller eval --task libero` in a subprocess: Ray, the embedded Redis, one
    simulator actor hosting 2 envs, the `null` backend (a zero action chunk: the arm holds still,
    gripper closed; not a policy). 4 episodes over tasks 0-1 (interleaved: 2 each), 24 steps each;
    the first one with its video."""
    pytest.importorskip("libero.libero", reason="LIBERO is not installed in this interpreter: run "
                        "scripts/install_libero.sh --full and this test with .venv-libero/bin/python")
    pytest.importorskip("ray", reason="rolloutq eval needs Ray: scripts/install_libero.sh --full")
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUTQ_")}
    env["COLUMNS"] = "200"  # the summary's lines unwrapped
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "rolloutq.controller", "eval", "--task", "libero",
         "--task-option", "suite=libero_spatial", "--task-option", "tasks=[0,1]", "--task-option", "max_steps=24",
         "--task-option", "image_size=128",
         "--backend", "null", "--episodes", "4", "--envs-per-sim", "2", "--out", str(out),
         "--set", "progress=false", "--set", "video_episodes=1"],
        capture_output=True, text=True, timeout=380, env=env,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    print(f"\nrolloutq eval --task libero, 4 x 24 steps on 2 envs: {wall:.1f} s in all, episodes "
          f"{summary['wall_s']} s, {summary['env_steps_per_s']} env steps/s")
    assert (summary["episodes"], summary["successes"], summary["env_steps"]) == (4, 0, 96)
    assert summary["outcomes"] == {"success": 0, "failure": 4, "policy_error": 0, "sim_error": 0, "infra": 0}
    assert summary["success_ci95"][0] == 0.0 and 0.4 < summary["success_ci95"][1] < 0.6  # Wilson, 0 of 4
    table = summary["groups"]
    assert list(table["groups"]) == ["task 0", "task 1"]
    for row in table["groups"].values():
        assert (row["episodes"], row["successes"], row["success_rate"], row["unscored"]) == (2, 0, 0.0, 0)
        assert row["success_ci95"][0] == 0.0 and 0.6 < row["success_ci95"][1] < 0.9
    assert table["mean_group_rate"] == 0.0
    assert summary["config"]["task_options"]["suite"] == "libero_spatial"
    records = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["seed"] for r in records) == [0, 1, 2, 3]
    assert all((r["outcome"], r["steps"], r["policy_calls"]) == ("failure", 24, 3) for r in records), records
    assert len({r["sim"] for r in records}) == 1  # both envs in one simulator process
    shown = proc.stdout + proc.stderr
    assert "Traceback" not in shown
    for task in (0, 1):  # the printed table: ok/n, rate, the Wilson interval of 0 of 2
        assert re.search(rf"task {task}\s+0/2\s+0\.00\s+\[0\.00, 0\.66\]", shown), shown[-2000:]
    assert "mean of the groups' rates: 0.000" in shown
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["episode_0000.gif"]  # video_episodes=1
    assert _gif_frames((out / "videos" / "episode_0000.gif").read_bytes()) == (25, (128, 128))  # reset + 24 steps
    assert "![episode_0000](videos/episode_0000.gif)" in (out / "report.md").read_text()
