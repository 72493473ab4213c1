"""The scripted expert solves the G1 task on fixed seeds, and neither batching nor rows (a vectorised
simulator's envs in one request) change its actions."""

import numpy as np
import pytest
from rolloutq.broker.schema import row_keys
from rolloutq.policy_workers.backends import make_backend
from rolloutq.policy_workers.errors import SchemaMismatch
from rolloutq.sim_workers.rows import split_rows, stack_rows
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
        assert list(batched[0][k].shape) == [1, *spec["shape"][1:]] and batched[0][k].dtype == np.float32


def test_expert_requires_privileged_key(expert):
    env = make_task("g1-pickplace", render=False)
    env.reset(0)
    with pytest.raises(KeyError):
        expert.infer([env.observe()])


def states(seeds, steps=0):
    """One privileged observation per seed, `steps` expert-driven steps into its episode."""
    env = make_task("g1-pickplace", privileged=True, render=False)
    plan = make_backend("g1-expert")
    out = []
    for s in seeds:
        env.reset(s)
        for t in range(steps):
            if t % 8 == 0:
                chunk = plan.infer([env.observe()])[0]
            env.step(env.action_from_chunk(chunk, t % 8))
        out.append(env.observe())
    return out


def test_rows_of_one_request_equal_one_row_requests(expert):
    """K = 3 envs in one request (stacked as a vectorised simulator stacks them) give, row for row,
    the chunks of three one-row requests; each row's plan comes from its own state: a reordered
    request gives the same rows reordered, and a two-row request beside a one-row one keeps both."""
    obs = states([0, 1, 2], steps=16) + states([3])
    singles = [expert.infer([o])[0] for o in obs[:3]]
    assert not np.array_equal(singles[0]["right_arm"], singles[1]["right_arm"])  # the states differ
    (rows,) = expert.infer([stack_rows(obs[:3])])
    meta = expert.metadata()
    for key, spec in meta.action_schema.items():
        assert rows[key].shape == (3, *spec["shape"][1:]) and rows[key].dtype == np.float32
    for single, row in zip(singles, split_rows(rows, 3), strict=True):
        assert set(row) == set(single)
        for k in single:
            np.testing.assert_array_equal(row[k], single[k])
    (backwards,) = expert.infer([stack_rows(obs[2::-1])])
    for k in rows:
        np.testing.assert_array_equal(backwards[k], rows[k][::-1])
    two, one = expert.infer([stack_rows(obs[1:3]), obs[3]])
    for k in rows:
        np.testing.assert_array_equal(two[k], rows[k][1:])
        np.testing.assert_array_equal(one[k], expert.infer([obs[3]])[0][k])


def test_schema_takes_rows_and_refuses_uneven_ones(expert):
    meta = expert.metadata()
    assert "privileged.object_poses" in row_keys(meta.observation_schema)  # a vectorised simulator may send rows
    assert all(spec["shape"][0] == -1 for spec in meta.action_schema.values())
    uneven = stack_rows(states([0, 1]))
    uneven["privileged.object_poses"] = uneven["privileged.object_poses"][:1]
    with pytest.raises(SchemaMismatch, match="one row per env"):
        expert.infer([uneven])


def test_preflight_matches_the_privileged_task():
    """The open leading dimension still fits what g1-pickplace sends (rows of 1)."""
    from rolloutq.controller.preflight import Plan, preflight

    plan = Plan(backend="g1-expert", task="g1-pickplace", task_options={"privileged": True})
    assert preflight(plan, redis_required=False, engines=False) == []
