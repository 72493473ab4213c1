"""The scripted expert solves the G1 task on fixed seeds, and batching does not change its actions."""

import numpy as np
import pytest
from rolloutq.policy_workers.backends import make_backend
from rolloutq.sim_workers.tasks import make_task


@pytest.fixture(scope="module")
def expert():
    b = make_backend("g1-expert")
    b.load()
    return b


def run(env, policy, seed, horizon=8):
    env.reset(seed)
    while True:
        chunk = policy.infer([env.observe()])[0]
        for t in range(horizon):
            r = env.step(env.action_from_chunk(chunk, t))
            if r.done:
                return r.success


def test_expert_succeeds_on_fixed_seeds(expert):
    env = make_task("g1-pickplace", privileged=True, render=False)
    assert [run(env, expert, s) for s in (0, 1, 2, 3)] == [True] * 4


def test_zero_policy_fails(expert):
    env = make_task("g1-pickplace", privileged=True, render=False, max_steps=40)
    env.reset(0)
    a = np.zeros((1, 28), np.float32)
    assert not any(env.step(a).success for _ in range(40))


def test_expert_batch_equals_single(expert):
    env = make_task("g1-pickplace", privileged=True, render=False)
    obs = []
    for s in range(4):
        env.reset(s)
        obs.append(env.observe())
    batched = expert.infer(obs)
    for o, b in zip(obs, batched, strict=True):
        single = expert.infer([o])[0]
        for k in single:
            np.testing.assert_array_equal(single[k], b[k])
    meta = expert.metadata()
    assert meta.chunk_length == 40 and meta.action_horizon == 8
    assert set(batched[0]) == set(meta.action_schema)
    for k, spec in meta.action_schema.items():
        assert list(batched[0][k].shape) == spec["shape"] and batched[0][k].dtype == np.float32


def test_expert_requires_privileged_key(expert):
    env = make_task("g1-pickplace", render=False)
    env.reset(0)
    with pytest.raises(KeyError):
        expert.infer([env.observe()])
