"""The `isaaclab` adapter on the real Isaac Lab 3.0, kit-less (Newton physics and Newton's renderer on
the CPU, no Isaac Sim), with the stock manager-based task `Isaac-Cartpole-Camera` (96x96 RGB tiled
camera) on stand-in assets (scripts/make_isaaclab_assets.py).

Runs from the Isaac Lab venv (scripts/install_isaaclab.sh):

    PYTHONPATH=. .venv-isaaclab/bin/python -m pytest -q tests/sim_workers/test_isaaclab3.py

Elsewhere it skips and says so. The first run in a fresh home compiles Warp's CPU kernels (minutes);
later runs find them in ~/.cache/warp.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rolloutq.policy_workers.base import PolicyBackend, PolicyMetadata

from tests.gifs import played_frames

TASK = "Isaac-Cartpole-Camera"
ROOT = Path(__file__).resolve().parents[2]
CAMERA = "video.tiled_camera"
SCHEMA = {CAMERA: {"dtype": "uint8", "shape": [-1, 1, 96, 96, 3]},
          "state.critic": {"dtype": "float32", "shape": [-1, 1, 4]}}  # cart pos, pole angle, their velocities

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(importlib.util.find_spec("isaaclab_tasks") is None,
                       reason="Isaac Lab 3.0 is not installed in this interpreter: run scripts/install_isaaclab.sh "
                              "and this test with .venv-isaaclab/bin/python"),
]


@pytest.fixture(scope="module")
def asset_root(tmp_path_factory) -> str:
    """ISAACSIM_ASSET_ROOT when the caller set it (scripts/test.sh), else a fresh folder; stand-ins are
    written only where the cartpole is missing."""
    root = os.environ.get("ISAACSIM_ASSET_ROOT") or str(tmp_path_factory.mktemp("isaaclab-assets"))
    if not (Path(root) / "Isaac/IsaacLab/Robots/Classic/Cartpole/cartpole.usd").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts/make_isaaclab_assets.py"), root], check=True)
    return root


class CartPusher(PolicyBackend):
    """Test double taking K rows per request: pushes the cart (+1, full effort) while it is right of the
    rail's centre, else leaves it; records the shape and dtype of every observation it is sent."""

    seen: list[dict[str, tuple[tuple[int, ...], str]]] = []
    in_view: list[float] = []  # image contrast of the rows whose cart was in the camera's view

    def __init__(self, **_: object) -> None:
        pass

    def load(self) -> None:
        pass

    def metadata(self) -> PolicyMetadata:
        return PolicyMetadata(model_id="cart-pusher", observation_schema=SCHEMA,
                              action_schema={"action": {"dtype": "float32", "shape": [-1, 40, 1]}},
                              chunk_length=40, action_horizon=8)

    def infer(self, batch):
        out = []
        for obs in batch:
            CartPusher.seen.append({k: (v.shape, str(v.dtype)) for k, v in obs.items()})
            CartPusher.in_view.extend(float(obs[CAMERA][j].std()) for j in np.flatnonzero(
                np.abs(obs["state.critic"][:, 0, 0]) < 1.5))  # the camera frames about +-2 m of the rail
            push = (obs["state.critic"][:, 0, 0] > 0).astype(np.float32)
            out.append({"action": np.repeat(push[:, None, None], 40, axis=1)})
        return out


def test_episodes_through_redis_four_subenvs_one_request_per_step(redis_url, asset_root):
    from tests.inprocess import run_sweep

    max_steps = 30
    videos: dict[int, bytes] = {}
    records = asyncio.run(run_sweep(
        redis_url, "tests.sim_workers.test_isaaclab3:CartPusher", {}, "isaaclab",
        {"task": TASK, "asset_root": asset_root, "success_on_time_limit": True, "max_steps": max_steps,
         "rows_per_request": 4},
        seeds=list(range(6)), sims=1, envs=4, max_batch_size=4, max_wait_ms=20, video_episodes=1, videos=videos))
    stats = records.pop()["_worker"]
    print(f"\nworker batches {stats.get('batches')}; "
          f"outcomes {[(r['seed'], r['outcome'], r['steps']) for r in records]}")
    assert sorted(r["seed"] for r in records) == list(range(6))
    assert len({r["sim"] for r in records}) == 1  # one simulator process hosts the 4 sub-envs
    for r in records:  # scored by the env's own terminations: a cart pushed off the rail ends early and fails
        assert r["outcome"] in ("success", "failure"), r
        assert (r["outcome"] == "success") == (r["steps"] == max_steps), r
        assert r["policy_calls"] == -(-r["steps"] // 8), r
    assert {r["outcome"] for r in records} == {"success", "failure"}
    rows = [shapes[CAMERA][0][0] for shapes in CartPusher.seen]
    assert all(len(s) == 2 for s in CartPusher.seen)
    assert max(rows) == 4, rows  # all four sub-envs in one request
    assert all(shapes[CAMERA] == ((n, 1, 96, 96, 3), "uint8") and shapes["state.critic"] == ((n, 1, 4), "float32")
               for shapes, n in zip(CartPusher.seen, rows, strict=True))
    assert CartPusher.in_view and min(CartPusher.in_view) > 1.0  # the camera saw the cartpole, not a blank frame
    assert sorted(videos) == [0]  # episode 0's video: its camera after the reset and after each step
    first = next(r for r in records if r["episode"] == 0)
    frames, _ = played_frames(videos[0])
    assert len(frames) == first["steps"] + 1 and frames[0].shape == (96, 96, 3), (len(frames), first["steps"])
    assert max(float(f.std()) for f in frames) > 1.0  # not blank


def test_the_same_seed_gives_the_same_first_observation(asset_root):
    from rolloutq.sim_workers.adapters.isaaclab import VectorAdapter

    venv = VectorAdapter(task=TASK, num_envs=4, asset_root=asset_root)
    try:
        assert venv.num_envs == 4 and venv.action_dims == {"action": 1} and venv.max_steps == 300
        venv.reset([0, 1, 2, 3], [7, 8, 7, 8])
        first = venv.observe([0, 1, 2, 3])
        for key in (CAMERA, "state.critic"):
            np.testing.assert_array_equal(first[0][key], first[2][key])
            np.testing.assert_array_equal(first[1][key], first[3][key])
            assert not np.array_equal(first[0][key], first[1][key])
        venv.step(np.zeros((4, 1), np.float32))
        after = venv.observe([0, 1, 2, 3])  # the same seed, the same dynamics (velocities included)
        np.testing.assert_allclose(after[0]["state.critic"], after[2]["state.critic"], atol=1e-6)
        np.testing.assert_allclose(after[1]["state.critic"], after[3]["state.critic"], atol=1e-6)
        for _ in range(5):
            venv.step(np.ones((4, 1), np.float32))
        moved = venv.observe([0])[0]
        assert not np.array_equal(moved[CAMERA], first[0][CAMERA])
        venv.reset([0], [7])  # the same seed after other episodes ran: the same start
        again = venv.observe([0])[0]
        np.testing.assert_array_equal(again[CAMERA], first[0][CAMERA])
        np.testing.assert_array_equal(again["state.critic"], first[0]["state.critic"])
        assert venv.frame(0).shape == (96, 96, 3)
    finally:
        venv.close()


def test_the_real_g1_schema_reads_isaaclab3_poses_in_the_base_frame(asset_root):
    """The REAL_G1 translation on Isaac Lab 3.0's data (ProxyArrays, (x, y, z, w) quaternions), with the
    cartpole standing in for a G1: the pole as the 'wrist', the cart as the base body. The pole hinges
    about x, 0.12 m beside the cart, its body origin 0.5 m up the pole (scripts/make_isaaclab_assets.py)."""
    from rolloutq.sim_workers import real_g1
    from rolloutq.sim_workers.adapters.isaaclab import VectorAdapter

    venv = VectorAdapter(task=TASK, num_envs=1, asset_root=asset_root, schema="real_g1", wrist_bodies=("pole", "pole"),
                         base_body="cart", camera="sensor:tiled_camera", image_size=64)
    try:
        venv.reset([0], [3])
        for _ in range(4):
            venv.step(venv.idle_action(0)[None])
        obs = venv.observe([0])[0]
        angle = float(venv.env.scene["robot"].data.joint_pos.torch[0, 1])
        assert abs(angle) > 0.05  # the pole is tilted, so a wrong rotation order shows
        c, s = np.cos(angle), np.sin(angle)
        np.testing.assert_allclose(obs["state.left_wrist_eef_9d"][0, 0], [0.12, -0.5 * s, 0.5 * c, 1, 0, 0, 0, c, -s],
                                   atol=2e-3)
        assert obs[real_g1.VIDEO_KEY].shape == (1, 2, 64, 64, 3) and obs[real_g1.VIDEO_KEY].dtype == np.uint8
        assert obs[real_g1.VIDEO_KEY].std() > 1.0
    finally:
        venv.close()
