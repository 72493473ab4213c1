"""Every episode is scored where it belongs (issue 20 §1): a policy that emits NaN or chunks that do
not fit its own action schema fails its episodes (`policy_error`, in the denominator); a simulator
that raises or sends a NaN observation gets `sim_error` (re-run, not scored, a non-zero exit when it
persists). A real redis-server, a real policy worker and a real `SimWorker` throughout; the sweeps
are followed by the controller's own `follow_sweep` and scored by `summarize`."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.errors import PolicyErrorReply, PolicyTimeout, RedisUnavailable
from rolloutq.broker.keys import Keys
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
from rolloutq.broker.sweep import SweepQueue
from rolloutq.controller.eval import EvalSettings
from rolloutq.controller.follow import follow_sweep
from rolloutq.controller.intake import ResultIntake
from rolloutq.controller.results import EXIT_SIM_ERRORS, summarize, verdict
from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings
from rolloutq.sim_workers.errors import BadActionChunk
from rolloutq.sim_workers.outcomes import check_chunk, classify
from rolloutq.sim_workers.runner import EnvSlot, run_episode
from rolloutq.sim_workers.tasks.reach import Adapter as Reach
from rolloutq.sim_workers.worker import SimWorker, SimWorkerSettings

from tests.fault.backends import FaultBackend
from tests.fault.sweep import sweep_config

SCHEMA = {"arm": {"dtype": "float32", "shape": [1, 40, 2]}}


class NanBackend(FaultBackend):
    """Publishes the `arm` (1, 40, 2) schema and answers every observation with NaN actions."""

    def infer(self, batch: list[Any]) -> list[Any]:
        return [{"arm": np.full((1, 40, 2), np.nan, np.float32)} for _ in batch]


class WideBackend(FaultBackend):
    """Publishes `arm` (1, 40, 2) and answers (1, 40, 3): a chunk that does not fit its own schema."""

    def infer(self, batch: list[Any]) -> list[Any]:
        return [{"arm": np.zeros((1, 40, 3), np.float32)} for _ in batch]


class CountingReach(Reach):
    """The reach task, counting the chunks it was handed."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.chunks_seen = 0

    def action_from_chunk(self, chunk, t):
        self.chunks_seen += 1
        return super().action_from_chunk(chunk, t)


class NanObservationReach(Reach):
    def observe(self):
        obs = super().observe()
        obs["state.arm"] = np.full((1, 1, 2), np.nan, np.float32)
        return obs


class BrokenReach(Reach):
    """Raises on its third step; with `flaky`, only on the first attempt at each seed."""

    seeds_failed: set[int] = set()

    def __init__(self, flaky: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.flaky = flaky
        self._seed = -1
        self._t = 0

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self._seed, self._t = seed, 0

    def step(self, action):
        self._t += 1
        if self._t == 3 and not (self.flaky and self._seed in self.seeds_failed):
            self.seeds_failed.add(self._seed)
            raise RuntimeError("physics diverged")
        return super().step(action)


def _worker(redis: RedisSettings, backend: FaultBackend, check_finite: bool = True) -> PolicyWorker:
    return PolicyWorker(PolicyWorkerSettings(redis=redis, worker=WorkerSettings(
        policy="p", block_ms=20, check_finite=check_finite, batch=BatchSettings(max_batch_size=4, max_wait_ms=2))),
        backend=backend)


async def _one_episode(redis_url: str, backend: FaultBackend, env: Reach, check_finite: bool = True):
    """One episode of `env` against `backend` through `run_episode`, with the policy's published schema."""
    redis = RedisSettings(url=redis_url)
    stop = asyncio.Event()
    worker_task = asyncio.create_task(_worker(redis, backend, check_finite).run(stop))
    r = connect_async(redis)
    slot = EnvSlot(env, "t")
    try:
        client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=20, check_finite=check_finite))
        meta = await client.metadata(wait_s=30)
        return await run_episode(slot, client, episode=0, seed=3, rollout_id="e0", action_horizon=8,
                                 action_schema=meta.get("action_schema"))
    finally:
        await slot.close()
        stop.set()
        await asyncio.wait_for(worker_task, 30)
        await r.aclose()


async def _sweep(redis_url: str, backend: FaultBackend, episodes: int, max_attempts: int = 3) -> list[dict]:
    """A sweep of reach episodes run by one in-process SimWorker (2 envs), followed by `follow_sweep`."""
    redis = RedisSettings(url=redis_url)
    stop = asyncio.Event()
    worker_task = asyncio.create_task(_worker(redis, backend).run(stop))
    r = connect_async(redis)
    try:
        queue = SweepQueue(r, "outcomes")
        intake = ResultIntake("outcomes")
        await queue.create(sweep_config(max_steps=16), [intake.spec(i, 100 + i) for i in range(episodes)], 30.0)
        sim = SimWorker(SimWorkerSettings(run="outcomes", redis=redis, envs=2, sim_id="s0",
                                          client=ClientSettings(deadline_s=20)))
        sim_stop = asyncio.Event()
        sim_task = asyncio.create_task(sim.run(sim_stop))
        settings = EvalSettings(episodes=episodes, policy="p", progress=False, timeout_s=90, max_attempts=max_attempts)
        try:
            records, _ = await follow_sweep(settings, Console(file=io.StringIO()), r, Keys(), queue, actors=[], runs={},
                                            ray=None, intake=intake)
        finally:
            await queue.stop()
            sim_stop.set()
            await asyncio.wait_for(sim_task, 30)
        return records
    finally:
        stop.set()
        await asyncio.wait_for(worker_task, 30)
        await r.aclose()


def _summary(records: list[dict], episodes: int) -> dict:
    return summarize(records, 1.0, {}, {"episodes": episodes})


@pytest.mark.timeout(120)
def test_nan_policy_fails_every_episode_in_the_denominator(redis_url):
    """The worker refuses the NaN output (`bad_action`, final): each episode is a policy error on its
    first attempt, never re-run, and the success rate is 0 over all N episodes."""
    n = 6
    records = asyncio.run(_sweep(redis_url, NanBackend(), n))
    assert sorted(r["episode"] for r in records) == list(range(n))
    assert {(r["outcome"], r["reason"], r["attempt"], r["success"]) for r in records} == {
        ("policy_error", "bad_action", 1, False)}
    summary = _summary(records, n)
    print(f"FIGURE NaN policy: {n} episodes, outcomes {summary['outcomes']}, reasons {summary['reasons']}, "
          f"success rate {summary['success_rate']} over {summary['episodes']} scored")
    assert summary["episodes"] == n and summary["policy_errors"] == n and summary["successes"] == 0
    assert summary["success_rate"] == 0.0 and summary["success_ci95"][1] < 0.5
    assert summary["outcomes"] == {"success": 0, "failure": 0, "policy_error": n, "sim_error": 0, "infra": 0}
    assert summary["reasons"] == {"policy_error": {"bad_action": n}}
    assert verdict(summary, n, max_sim_errors=0).exit_code == 0


@pytest.mark.timeout(60)
def test_runner_refuses_a_nan_chunk_before_the_simulator_sees_it(redis_url):
    """With the worker's and the client's finite checks off, the runner's own check catches the NaN."""
    env = CountingReach(image_size=32, max_steps=16)
    record = asyncio.run(_one_episode(redis_url, NanBackend(), env, check_finite=False))
    assert (record.outcome, record.reason, record.success) == ("policy_error", "non_finite_action", False)
    assert "'arm'" in record.error and record.policy_calls == 1
    assert env.chunks_seen == 0 and record.steps == 0


@pytest.mark.timeout(60)
def test_a_chunk_that_does_not_fit_the_published_action_schema_is_a_policy_error(redis_url):
    env = CountingReach(image_size=32, max_steps=16)
    record = asyncio.run(_one_episode(redis_url, WideBackend(), env))
    assert (record.outcome, record.reason) == ("policy_error", "action_schema_mismatch")
    assert "(1, 8, 3)" in record.error and "[1, 40, 2]" in record.error  # cut to the 8 steps asked for
    assert env.chunks_seen == 0


@pytest.mark.timeout(60)
def test_a_nan_observation_is_a_simulator_error(redis_url):
    record = asyncio.run(_one_episode(redis_url, FaultBackend(), NanObservationReach(image_size=32, max_steps=16)))
    assert (record.outcome, record.reason, record.success) == ("sim_error", "bad_observation", False)
    assert "state.arm" in record.error


@pytest.mark.timeout(120)
def test_a_simulator_that_raises_once_is_re_run_and_scored(redis_url, monkeypatch):
    BrokenReach.seeds_failed = set()
    monkeypatch.setattr("rolloutq.sim_workers.worker.make_task", lambda name, **kw: BrokenReach(flaky=True, **kw))
    records = asyncio.run(_sweep(redis_url, FaultBackend(), 3))
    assert {r["attempt"] for r in records} == {2}  # every first attempt raised and was re-run
    assert all(r["outcome"] in ("success", "failure") and r["reason"] == "" for r in records), records
    summary = _summary(records, 3)
    assert summary["episodes"] == 3 and summary["sim_errors"] == 0
    assert verdict(summary, 3, max_sim_errors=0).exit_code == 0


@pytest.mark.timeout(120)
def test_a_simulator_that_keeps_raising_ends_in_sim_error_and_fails_the_run(redis_url, monkeypatch):
    monkeypatch.setattr("rolloutq.sim_workers.worker.make_task", lambda name, **kw: BrokenReach(**kw))
    records = asyncio.run(_sweep(redis_url, FaultBackend(), 3, max_attempts=2))
    assert {(r["outcome"], r["reason"], r["attempt"]) for r in records} == {("sim_error", "sim_raised", 2)}
    assert all("RuntimeError: physics diverged" in r["error"] for r in records)
    summary = _summary(records, 3)
    assert summary["episodes"] == 0 and summary["sim_errors"] == 3 and summary["reasons"] == {
        "sim_error": {"sim_raised": 3}}
    ending = verdict(summary, 3, max_sim_errors=0)
    assert ending.exit_code == EXIT_SIM_ERRORS and "3 episode(s) ended in sim_error" in ending.message
    assert verdict(summary, 3, max_sim_errors=3).exit_code == 0


def test_check_chunk_rules():
    ok = {"arm": np.zeros((1, 8, 2), np.float32), "note": np.zeros(3)}
    check_chunk(ok, SCHEMA)  # cut to the steps asked for, extra keys allowed
    check_chunk({"arm": np.zeros((4, 8, 2), np.float32)}, {"arm": {"dtype": "float32", "shape": [-1, 40, 2]}})
    check_chunk({"anything": np.zeros(2)}, None)
    for bad, reason in [
        ({"arm": np.array([[[np.inf, 0.0]]], np.float32)}, "non_finite_action"),
        ({"arm": np.zeros((1, 8, 2), np.float32)[..., :1]}, "action_schema_mismatch"),
        ({"arm": np.zeros((8, 2), np.float32)}, "action_schema_mismatch"),
        ({"arm": np.zeros((2, 8, 2), np.float32)}, "action_schema_mismatch"),
        ({"arm": np.zeros((1, 41, 2), np.float32)}, "action_schema_mismatch"),
        ({"arm": np.zeros((1, 0, 2), np.float32)}, "action_schema_mismatch"),
        ({"arm": np.zeros((1, 8, 2), np.int32)}, "action_schema_mismatch"),
        ({"leg": np.zeros((1, 8, 2), np.float32)}, "action_schema_mismatch"),
        ({"arm": [[0.0, 0.0]]}, "action_schema_mismatch"),
    ]:
        with pytest.raises(BadActionChunk) as e:
            check_chunk(bad, SCHEMA)
        assert e.value.reason == reason, bad


def test_classify_puts_each_error_with_its_owner():
    cases = {
        PolicyErrorReply("inference_failed", "boom"): ("policy_error", "inference_failed"),
        PolicyErrorReply("bad_action", "nan"): ("policy_error", "bad_action"),
        PolicyErrorReply("bad_observation", "nan"): ("sim_error", "bad_observation"),
        PolicyErrorReply("schema_mismatch", "x"): ("sim_error", "schema_mismatch"),
        PolicyErrorReply("dead_letter", "x"): ("infra", "dead_letter"),
        PolicyErrorReply("expired", "x"): ("infra", "expired"),
        PolicyErrorReply("shutting_down", "x"): ("infra", "shutting_down"),
        PolicyTimeout("late"): ("infra", "policy_timeout"),
        RedisUnavailable("down"): ("infra", "redis_unavailable"),
        ConnectionError("reset"): ("infra", "redis_unavailable"),
        ValueError("adapter bug"): ("sim_error", "sim_raised"),
    }
    for exc, want in cases.items():
        got = classify(exc)
        assert (got.outcome, got.reason) == want, exc
    assert "ValueError: adapter bug" in classify(ValueError("adapter bug")).error
