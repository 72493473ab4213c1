import numpy as np
import pytest
from rolloutq.sim_workers import real_g1


def rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_identity_pose_encoding():
    v = real_g1.pose_to_9d([0.1, -0.2, 0.3], np.eye(3))
    np.testing.assert_allclose(v, [0.1, -0.2, 0.3, 1, 0, 0, 0, 1, 0], atol=1e-7)
    assert v.dtype == np.float32


def test_rotation_uses_rows():
    r = rot_z(np.pi / 2)  # rows: [0,-1,0], [1,0,0]
    v = real_g1.pose_to_9d(np.zeros(3), r)
    np.testing.assert_allclose(v[3:], [0, -1, 0, 1, 0, 0], atol=1e-7)


@pytest.mark.parametrize("angle", [0.0, 0.3, -2.0, np.pi])
def test_roundtrip(angle):
    c, s = np.cos(0.7), np.sin(0.7)
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    r = rot_z(angle) @ rx
    pos, back = real_g1.pose_from_9d(real_g1.pose_to_9d([1, 2, 3], r))
    np.testing.assert_allclose(pos, [1, 2, 3], atol=1e-6)
    np.testing.assert_allclose(back, r, atol=1e-6)


def test_schema_shapes():
    obs_s = real_g1.observation_schema()
    assert obs_s["video.ego_view"] == {"dtype": "uint8", "shape": [1, 2, 256, 256, 3]}
    assert obs_s["state.left_wrist_eef_9d"]["shape"] == [1, 1, 9]
    assert obs_s["state.waist"]["shape"] == [1, 1, 3]
    assert obs_s["annotation.human.task_description"] == {"kind": "text"}
    act_s = real_g1.action_schema()
    assert len(act_s) == 9
    assert act_s["navigate_command"]["shape"] == [1, 40, 3]
    assert real_g1.ENV_ACTION_DIM == 28


def test_build_observation():
    obs = real_g1.build_observation(
        np.zeros((2, 256, 256, 3), np.uint8),
        left_eef=real_g1.pose_to_9d(np.zeros(3), np.eye(3)),
        right_eef=real_g1.pose_to_9d(np.ones(3), np.eye(3)),
        left_arm=np.arange(7),
        right_arm=np.zeros(7),
        left_hand=np.zeros(7),
        right_hand=np.zeros(7),
        waist=np.zeros(3),
    )
    assert obs["video.ego_view"].shape == (1, 2, 256, 256, 3)
    assert obs["state.left_arm"].shape == (1, 1, 7) and obs["state.left_arm"].dtype == np.float32
    assert obs["state.left_arm"][0, 0, 6] == 6
    assert obs["annotation.human.task_description"] == [["pick up the apple and place it on the plate"]]
    with pytest.raises(ValueError):
        real_g1.build_observation(
            np.zeros((2, 256, 256, 3), np.uint8),
            left_eef=np.zeros(8),
            right_eef=np.zeros(9),
            left_arm=np.zeros(7),
            right_arm=np.zeros(7),
            left_hand=np.zeros(7),
            right_hand=np.zeros(7),
            waist=np.zeros(3),
        )


def test_chunk_step_order():
    chunk = real_g1.empty_chunk()
    for i, key in enumerate(real_g1.ENV_ACTION_KEYS):
        chunk[key][0, 5] = i + 1
    a = real_g1.chunk_step_to_env_action(chunk, 5)
    assert a.shape == (1, 28) and a.dtype == np.float32
    np.testing.assert_array_equal(a[0], np.repeat([1, 2, 3, 4], 7))
    assert not real_g1.chunk_step_to_env_action(chunk, 4).any()
    parts = real_g1.split_env_action(a)
    np.testing.assert_array_equal(parts["right_hand"], np.full(7, 4))
    with pytest.raises(IndexError):
        real_g1.chunk_step_to_env_action(chunk, 40)
