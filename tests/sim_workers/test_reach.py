"""The reach task resets deterministically per seed and speaks its declared layout."""

from __future__ import annotations

import numpy as np
from rolloutq.sim_workers.tasks import available, make_task, task_class


def test_reset_is_deterministic_per_seed():
    a, b = make_task("reach", image_size=64), make_task("reach", image_size=64)
    try:
        a.reset(5)
        b.reset(5)
        oa, ob = a.observe(), b.observe()
        np.testing.assert_array_equal(oa["video.top"], ob["video.top"])
        np.testing.assert_array_equal(oa["state.arm"], ob["state.arm"])
        b.reset(6)
        assert not np.array_equal(oa["video.top"], b.observe()["video.top"])
    finally:
        a.close()
        b.close()


def test_observation_matches_layout_and_episode_ends_at_cap():
    layout = task_class("reach").layout
    env = make_task("reach", image_size=64, max_steps=5)
    try:
        env.reset(0)
        obs = env.observe()
        assert obs["video.top"].shape == (1, 1, 64, 64, 3) and obs["video.top"].dtype == np.uint8
        assert obs["state.arm"].shape == (1, 1, layout["state_dims"]["state.arm"])
        chunk = {"arm": np.zeros((1, 40, 2), np.float32)}
        results = [env.step(env.action_from_chunk(chunk, t)) for t in range(5)]
        assert [r.done for r in results] == [False] * 4 + [True]
    finally:
        env.close()
    assert "reach" in available()
