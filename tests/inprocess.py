"""Run a whole sweep inside one asyncio process (policy worker + sim workers, no Ray): the same
code paths as `rolloutq eval` minus the Ray plumbing, for fast end-to-end tests."""

from __future__ import annotations

import asyncio
from typing import Any

from rolloutq.broker.batcher import MicroBatcher
from rolloutq.broker.client import fetch_metadata
from rolloutq.broker.connection import connect_async
from rolloutq.broker.keys import Keys
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
from rolloutq.broker.sweep import EpisodeSpec, SweepQueue
from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings
from rolloutq.sim_workers.worker import SimWorker, SimWorkerSettings


async def run_sweep(url: str, backend: str, backend_options: dict[str, Any], task: str,
                    task_options: dict[str, Any], seeds: list[int], sims: int, envs: int,
                    max_batch_size: int, max_wait_ms: float = 2.0, run: str = "t",
                    action_horizon: int = 8, shared_frames: bool = False, video_episodes: int = 0,
                    videos: dict[int, bytes] | None = None, hold_ms: float | None = None) -> list[dict[str, Any]]:
    """The sweep's records, and its worker's stats as a last `{"_worker": ...}` entry. `videos`, when
    given, receives the GIF each simulator sent with its result (episode -> bytes; recorded for the
    first `video_episodes` episodes). `hold_ms` swaps the worker's cohort dispatch for the plain
    deadline rule (a batch goes at `max_batch_size` rows or after `hold_ms`), so that tests which need
    batches of several rows get them whatever the machine's speed (the cohort rule batches only when
    that pays, which depends on the machine)."""
    redis = RedisSettings(url=url)
    worker = PolicyWorker(PolicyWorkerSettings(
        backend=backend, backend_options=backend_options, redis=redis,
        worker=WorkerSettings(policy="p", block_ms=20,
                              batch=BatchSettings(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms))))
    stop = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(stop))
    r = connect_async(redis)
    try:
        await fetch_metadata(r, Keys(), "p", wait_s=60)
        while worker.consumer is None:  # the metadata may be an earlier run's, still in Redis
            await asyncio.sleep(0.01)
        if hold_ms is not None:
            worker.consumer.batcher = MicroBatcher(max_batch_size, hold_ms / 1000)
        bytes_before = int((await r.info("stats"))["total_net_input_bytes"])
        queue = SweepQueue(r, run)
        config = {"policy": "p", "task": task, "task_options": task_options, "action_horizon": action_horizon,
                  "video_episodes": video_episodes}
        await queue.create(config, [EpisodeSpec(i, s) for i, s in enumerate(seeds)], lease_s=30)
        sim_workers = [SimWorker(SimWorkerSettings(run=run, redis=redis, envs=envs, sim_id=f"s{i}",
                                                   exit_when_drained=True,
                                                   client=ClientSettings(deadline_s=60,
                                                                         shared_frames=shared_frames)))
                       for i in range(sims)]
        await asyncio.wait_for(asyncio.gather(*[w.run() for w in sim_workers]), 600)
        records = [x.to_dict() for w in sim_workers for x in w.done]
        if videos is not None:
            videos.update({e.record["episode"]: e.video for e in await queue.read_results(b"0", 1) if e.video})
        stats = worker.stats()
        stats["redis_input_bytes"] = int((await r.info("stats"))["total_net_input_bytes"]) - bytes_before
        records.append({"_worker": stats})
        return records
    finally:
        stop.set()
        await asyncio.wait_for(worker_task, 30)
        await r.aclose()
