"""The MuJoCo G1 pick-and-place task: schema, deterministic resets, grasp mechanics."""

import numpy as np
import pytest
from rolloutq.sim_workers import real_g1
from rolloutq.sim_workers.tasks import make_task
from rolloutq.sim_workers.tasks.g1_pickplace import observation_schema


@pytest.fixture(scope="module")
def env():
    e = make_task("g1-pickplace", privileged=True)
    yield e
    e.close()


def _check_schema(obs, schema):
    for key, spec in schema.items():
        assert key in obs, key
        if spec.get("kind") == "text":
            assert obs[key] == [[real_g1.INSTRUCTION]]
        else:
            assert obs[key].dtype == np.dtype(spec["dtype"]), key
            assert list(obs[key].shape) == spec["shape"], key


def test_observation_matches_schema(env):
    env.reset(0)
    obs = env.observe()
    _check_schema(obs, observation_schema(privileged=True))
    assert set(obs) == set(observation_schema(privileged=True))
    # first observation of an episode: both frames are the current image
    np.testing.assert_array_equal(obs["video.ego_view"][0, 0], obs["video.ego_view"][0, 1])
    assert obs["video.ego_view"].std() > 5  # a real picture, not a blank frame
    # wrist poses are valid 9-D encodings (orthonormal rows)
    for side in ("left", "right"):
        v = obs[f"state.{side}_wrist_eef_9d"][0, 0]
        assert abs(np.linalg.norm(v[3:6]) - 1) < 1e-5 and abs(np.dot(v[3:6], v[6:9])) < 1e-5


def test_reset_is_deterministic_per_seed(env):
    env.reset(5)
    a = env.observe()
    for _ in range(3):
        env.step(np.zeros((1, 28), np.float32))
    env.reset(5)
    b = env.observe()
    np.testing.assert_array_equal(a["privileged.object_poses"], b["privileged.object_poses"])
    np.testing.assert_array_equal(a["video.ego_view"], b["video.ego_view"])
    for key in real_g1.STATE_DIMS:
        np.testing.assert_array_equal(a[key], b[key])
    env.reset(6)
    c = env.observe()
    assert not np.allclose(a["privileged.object_poses"][0, :, :2], c["privileged.object_poses"][0, :, :2])


def test_layout_respects_separation(env):
    for seed in range(50):
        apple, plate = env.sample_layout(seed)
        assert np.linalg.norm(apple - plate) >= 0.17


def test_two_frame_stack_keeps_previous_frame(env):
    env.reset(1)
    first = env.observe()["video.ego_view"][0, 1]
    action = np.zeros((1, 28), np.float32)
    action[0, 7:14] = [-0.8, -0.3, 0.0, 0.5, 0.0, 0.5, 0.0]  # move the right arm into view
    for _ in range(10):
        env.step(action)
    second = env.observe()["video.ego_view"]
    np.testing.assert_array_equal(second[0, 0], first)
    assert not np.array_equal(second[0, 1], first)


def test_grasp_attaches_only_near_apple(env):
    env.reset(2)
    closed = np.zeros((1, 28), np.float32)
    q = env.data.qpos
    closed[0, 0:14] = np.concatenate([q[env.arm_qpos["left"]], q[env.arm_qpos["right"]]])
    closed[0, 21:28] = 1.0  # right hand closed, far from the apple
    result = env.step(closed)
    assert env.attached is None and not result.done
    obs = env.observe()
    np.testing.assert_array_equal(obs["state.right_hand"], np.ones((1, 1, 7), np.float32))


def test_random_actions_do_not_crash(env):
    env.reset(3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.uniform(-1, 1, size=(1, 28)).astype(np.float32)
        r = env.step(a)
        assert isinstance(r.success, bool)
    with pytest.raises(ValueError):
        env.step(np.zeros((1, 27), np.float32))
