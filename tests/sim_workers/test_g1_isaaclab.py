"""`g1-isaaclab`: the G1 pick-and-place as an Isaac Lab 3.0 manager-based env (Newton physics and
renderer on the CPU) against the MuJoCo task it rebuilds, and the scripted expert through Redis.

Runs from the Isaac Lab venv (scripts/install_isaaclab.sh) once the G1 is converted to USD
(scripts/make_g1_usd.py), with mjlab's model files there too (`pip install --no-deps mjlab==1.6.0`):

    PYTHONPATH=. .venv-isaaclab/bin/python -m pytest -q tests/sim_workers/test_g1_isaaclab.py

Elsewhere it skips and says why.
"""

from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(importlib.util.find_spec("isaaclab") is None,
                       reason="Isaac Lab 3.0 is not installed in this interpreter: run scripts/install_isaaclab.sh "
                              "and this test with .venv-isaaclab/bin/python"),
    pytest.mark.skipif(importlib.util.find_spec("mjlab") is None,
                       reason="mjlab's G1 model files are not installed here: pip install --no-deps mjlab==1.6.0"),
]

if importlib.util.find_spec("isaaclab") is not None:
    from rolloutq.sim_workers.tasks.g1_isaaclab.adapter import default_usd_path

    if not default_usd_path().is_file():
        pytestmark.append(pytest.mark.skip(reason=f"no converted G1 at {default_usd_path()}: run "
                                                  "scripts/make_g1_usd.py"))

from rolloutq.policy_workers.backends.g1_expert import Backend as Expert  # noqa: E402
from rolloutq.sim_workers.tasks.g1_pickplace import observation_schema  # noqa: E402

from tests.gifs import played_frames  # noqa: E402

STATE_KEYS = ("state.left_wrist_eef_9d", "state.right_wrist_eef_9d", "state.left_arm", "state.right_arm")


class RecordingExpert(Expert):
    """The scripted expert, recording the batch sizes and the (shape, dtype) of every observation it is sent."""

    seen: list[dict[str, tuple[tuple[int, ...], str]]] = []
    batches: list[int] = []

    def infer(self, batch):
        RecordingExpert.batches.append(len(batch))
        RecordingExpert.seen.extend({k: (np.shape(v), str(np.asarray(v).dtype)) for k, v in o.items()} for o in batch)
        return super().infer(batch)


def test_expert_episodes_through_redis_two_subenvs_in_one_process(redis_url):
    from tests.inprocess import run_sweep

    RecordingExpert.seen.clear()
    RecordingExpert.batches.clear()
    videos: dict[int, bytes] = {}
    records = asyncio.run(run_sweep(redis_url, "tests.sim_workers.test_g1_isaaclab:RecordingExpert", {},
                                    "g1-isaaclab", {"privileged": True}, seeds=[0, 1], sims=1, envs=2,
                                    max_batch_size=2, max_wait_ms=50, video_episodes=2, videos=videos))
    records.pop()  # the worker's stats
    print(f"\noutcomes {[(r['seed'], r['outcome'], r['steps']) for r in records]}; batches {RecordingExpert.batches}")
    assert sorted(r["seed"] for r in records) == [0, 1]
    assert len({r["sim"] for r in records}) == 1
    for r in records:  # the MuJoCo task's expert episodes for these seeds take 102 and 71 steps
        assert r["outcome"] == "success", r
        assert 60 <= r["steps"] <= 140, r
    assert max(RecordingExpert.batches) == 2  # the two sub-envs' requests served together
    schema = observation_schema(privileged=True)
    for shapes in RecordingExpert.seen:  # what the policy worker decoded from the wire
        assert set(shapes) == set(schema)
        for key, spec in schema.items():
            if "shape" in spec:
                assert shapes[key] == (tuple(spec["shape"]), spec["dtype"]), key
    assert sorted(videos) == [0, 1]
    for r in records:  # the camera after the reset and after each step; the last frame is the ended
        # episode's scene, drawn from its poses (Isaac Lab reset the env inside that step), not the next one's
        frames, _ = played_frames(videos[r["episode"]])
        assert len(frames) == r["steps"] + 1 and frames[0].shape == (256, 256, 3), (len(frames), r["steps"])
        first, before_last, last = (f.astype(int) for f in (frames[0], frames[-2], frames[-1]))
        assert np.abs(last - first).mean() > 2 * np.abs(last - before_last).mean(), r


def test_the_expert_takes_the_subenvs_as_one_request_of_rows(redis_url):
    """`rows_per_request`: the two sub-environments ask in one request of two rows, and each row's plan
    is its own (the same seeds succeed in as many steps as above, give or take the batching of physics)."""
    from tests.inprocess import run_sweep

    RecordingExpert.seen.clear()
    RecordingExpert.batches.clear()
    records = asyncio.run(run_sweep(redis_url, "tests.sim_workers.test_g1_isaaclab:RecordingExpert", {},
                                    "g1-isaaclab", {"privileged": True, "rows_per_request": 2}, seeds=[0, 1],
                                    sims=1, envs=2, max_batch_size=2, max_wait_ms=50, run="rows"))
    records.pop()
    print(f"\noutcomes {[(r['seed'], r['outcome'], r['steps']) for r in records]}; batches {RecordingExpert.batches}")
    assert sorted(r["seed"] for r in records) == [0, 1]
    for r in records:
        assert r["outcome"] == "success", r
        assert 60 <= r["steps"] <= 140, r
    rows = [shapes["state.right_arm"][0][0] for shapes in RecordingExpert.seen]
    assert set(RecordingExpert.batches) == {1} and max(rows) == 2, (RecordingExpert.batches, rows)


BC_SEEN: list[set[str]] = []


def recording_bc(**options):
    """The shipped behaviour-cloned checkpoint (`visuomotor`, `rolloutq eval`'s default backend),
    recording the keys of every observation it is sent."""
    from rolloutq.policy_workers.backends.visuomotor import Backend

    class Recording(Backend):
        def infer(self, batch):
            BC_SEEN.extend(set(o) for o in batch)
            return super().infer(batch)

    return Recording(**options)


def test_the_shipped_checkpoint_drives_the_isaac_lab_scene(redis_url):
    """Any backend with the REAL_G1 schema runs the Isaac Lab scene: the default one, the BC checkpoint
    trained on the MuJoCo task's images, gets the plain REAL_G1 observation (no privileged poses) from
    two sub-environments and each episode ends as the task decides (success, or failure at the 40-step
    cap set here), never as an error."""
    from tests.inprocess import run_sweep

    BC_SEEN.clear()
    records = asyncio.run(run_sweep(redis_url, "tests.sim_workers.test_g1_isaaclab:recording_bc", {},
                                    "g1-isaaclab", {"max_steps": 40}, seeds=[0, 1], sims=1, envs=2,
                                    max_batch_size=2, max_wait_ms=50, run="bc"))
    worker = records.pop()["_worker"]
    print(f"\noutcomes {[(r['seed'], r['outcome'], r['steps']) for r in records]}; worker {worker}")
    assert sorted(r["seed"] for r in records) == [0, 1]
    assert worker["model_id"] == "g1-bc/visuomotor-v1"
    for r in records:
        assert r["outcome"] in ("success", "failure") and r["reason"] == "", r
        assert r["outcome"] == "success" or r["steps"] == 40, r
        assert r["policy_calls"] == -(-r["steps"] // 8), r  # one call per 8-step chunk
    schema = observation_schema(privileged=False)
    assert not any(k.startswith("privileged") for k in schema)
    assert len(BC_SEEN) == sum(r["policy_calls"] for r in records)
    assert all(keys == set(schema) for keys in BC_SEEN)


@pytest.fixture(scope="module")
def venv():
    """One Isaac Lab simulation per process: the tests that share it run after the sweep's closed."""
    from rolloutq.sim_workers.tasks.g1_isaaclab import VectorAdapter

    env = VectorAdapter(num_envs=3, privileged=True)
    try:
        yield env
    finally:
        env.close()


def test_same_seed_same_layout_and_state_as_the_mujoco_task(venv):
    from rolloutq.sim_workers.tasks import make_task

    venv.reset([0, 1, 2], [4, 9, 4])
    first = venv.observe([0, 1, 2])
    poses = [o["privileged.object_poses"] for o in first]
    np.testing.assert_allclose(poses[0], poses[2], atol=1e-6)  # float32 world positions, envs apart
    assert not np.allclose(poses[0], poses[1])
    mujoco_task = make_task("g1-pickplace", privileged=True, render=False)
    try:
        for obs, seed in ((first[0], 4), (first[1], 9)):
            mujoco_task.reset(seed)
            ref = mujoco_task.observe()
            # xy from the same sampler; z differs by the contact's sink into the table (< 1 mm)
            np.testing.assert_allclose(obs["privileged.object_poses"], ref["privileged.object_poses"], atol=1e-3)
            for key in STATE_KEYS:  # the converted robot has the MJCF's kinematics, in the same pelvis frame
                np.testing.assert_allclose(obs[key], ref[key], atol=1e-4, err_msg=key)
    finally:
        mujoco_task.close()
    for _ in range(5):  # move, then the same seed again: the same start
        venv.step(np.stack([venv.idle_action(i) + np.float32(0.2) * (i + 1) for i in range(3)]))
    venv.reset([1], [4])
    again = venv.observe([1])[0]
    np.testing.assert_allclose(again["privileged.object_poses"], poses[0], atol=1e-6)
    np.testing.assert_allclose(again["video.ego_view"][0, 1], first[0]["video.ego_view"][0, 1], atol=2)


def test_the_camera_sees_the_arm_move(venv):
    venv.reset([0], [4])
    before = venv.observe([0])[0]["video.ego_view"][0, 1]
    assert before.std() > 10  # a scene, not a blank frame
    raise_right = venv.idle_action(0).copy()
    raise_right[7] = -1.0  # right shoulder pitch: the arm swings up into the view
    for _ in range(15):
        venv.step(np.stack([raise_right, venv.idle_action(1), venv.idle_action(2)]))
    after = venv.observe([0])[0]
    assert np.abs(after["video.ego_view"][0, 1].astype(int) - before.astype(int)).mean() > 2
    assert after["state.right_arm"][0, 0, 0] < -0.8
