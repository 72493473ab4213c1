"""SimWorker's drain rule: a simulator that leaves when the sweep is drained must not leave while
another simulator holds a lease. If that simulator died, its episode comes back when the lease
expires, and the one left behind has to run it."""

from __future__ import annotations

import asyncio

import pytest
from rolloutq.broker.client import fetch_metadata
from rolloutq.broker.connection import connect_async
from rolloutq.broker.keys import Keys
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
from rolloutq.broker.sweep import EpisodeSpec, SweepQueue
from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings
from rolloutq.sim_workers.worker import SimWorker, SimWorkerSettings

from tests.fault.backends import FaultBackend
from tests.fault.sweep import sweep_config


@pytest.mark.timeout(120)
def test_drained_simulator_waits_for_a_dead_simulators_lease_and_runs_its_episode(redis_url):
    async def scenario() -> tuple[list[int], int]:
        redis = RedisSettings(url=redis_url)
        worker = PolicyWorker(PolicyWorkerSettings(redis=redis, worker=WorkerSettings(
            policy="p", block_ms=20, batch=BatchSettings(max_batch_size=4, max_wait_ms=2))), backend=FaultBackend())
        stop = asyncio.Event()
        worker_task = asyncio.create_task(worker.run(stop))
        r = connect_async(redis)
        try:
            await fetch_metadata(r, Keys(), "p", wait_s=30)
            q = SweepQueue(r, "drain")
            await q.create(sweep_config(max_steps=16), [EpisodeSpec(0, 100), EpisodeSpec(1, 101)], lease_s=1.0)
            ghost = await q.take("ghost", 1000)  # a simulator that leases episode 0 and dies at once
            assert ghost is not None and ghost.episode == 0
            sim = SimWorker(SimWorkerSettings(run="drain", redis=redis, envs=1, sim_id="survivor",
                                              exit_when_drained=True, client=ClientSettings(deadline_s=30)))
            sim_task = asyncio.create_task(sim.run())
            handed_back = 0
            while not sim_task.done():  # the controller's part: hand expired leases back
                handed_back += await q.expire_leases()
                await asyncio.sleep(0.1)
            await sim_task
            return sorted(rec.episode for rec in sim.done), handed_back
        finally:
            stop.set()
            await asyncio.wait_for(worker_task, 30)
            await r.aclose()

    episodes, handed_back = asyncio.run(scenario())
    assert handed_back == 1
    assert episodes == [0, 1]  # it stayed for the ghost's episode instead of leaving after its own
