"""A simulator whose lease was lost while it ran the episode (it expired and another simulator took
the episode) gets its result refused by the sweep: it says so in one warning line and goes on."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from rolloutq.broker.client import fetch_metadata
from rolloutq.broker.connection import connect_async
from rolloutq.broker.keys import Keys
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
from rolloutq.broker.sweep import SweepQueue
from rolloutq.controller.intake import ResultIntake
from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings
from rolloutq.sim_workers.worker import SimWorker, SimWorkerSettings

from tests.fault.backends import FaultBackend
from tests.fault.sweep import sweep_config


@pytest.mark.timeout(120)
def test_result_of_a_lost_lease_is_refused_and_the_simulator_moves_on(redis_url, caplog):
    async def scenario() -> tuple[SimWorker, list]:
        redis = RedisSettings(url=redis_url)
        worker = PolicyWorker(PolicyWorkerSettings(redis=redis, worker=WorkerSettings(
            policy="p", block_ms=20, batch=BatchSettings(max_batch_size=4, max_wait_ms=2))),
            backend=FaultBackend(delay_s=0.1))
        stop = asyncio.Event()
        worker_task = asyncio.create_task(worker.run(stop))
        r = connect_async(redis)
        try:
            await fetch_metadata(r, Keys(), "p", wait_s=30)
            intake = ResultIntake("lost")
            q = SweepQueue(r, "lost")
            await q.create(sweep_config(max_steps=40), [intake.spec(0, 100)], lease_s=30)
            sim = SimWorker(SimWorkerSettings(run="lost", redis=redis, envs=1, sim_id="slow", exit_when_drained=True,
                                              client=ClientSettings(deadline_s=30)))
            sim_task = asyncio.create_task(sim.run())
            while not await r.hexists(q.k_leases, "0"):
                await asyncio.sleep(0.01)
            # the lease runs out under the simulator (as if it had stalled) and another one takes the episode
            lease = json.loads(await r.hget(q.k_leases, "0"))
            await r.hset(q.k_leases, "0", json.dumps({**lease, "expires": 0}))
            assert await q.expire_leases(intake.hand_back) == 1
            thief = await q.take("other", 30_000)
            assert await q.finish(0, thief.token, {"episode": 0, "sim": "other"}) is True
            await asyncio.wait_for(sim_task, 60)
            return sim, await q.read_results(b"0-0", block_ms=100)
        finally:
            stop.set()
            await asyncio.wait_for(worker_task, 30)
            await r.aclose()

    with caplog.at_level(logging.WARNING, logger="rolloutq.sim"):
        sim, results = asyncio.run(scenario())
    assert [e.record["sim"] for e in results] == ["other"]  # the slow simulator's result was not written
    assert [rec.episode for rec in sim.done] == [0]
    lost = [m for m in caplog.messages if "did not take the result of episode 0" in m]
    assert len(lost) == 1 and "lease was lost" in lost[0], caplog.messages
