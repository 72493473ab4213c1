"""Promise 1, the duplicate half: a request processed twice (here: a live but slow worker whose
batch outlasts `claim_idle_ms`, so a second worker re-claims and answers it too) yields two reply
entries, yet the simulator sees exactly one reply per (rollout, seq), and the late duplicate never
answers a later step."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.schema import Reply
from rolloutq.broker.settings import ClientSettings, RedisSettings

from tests.fault.conftest import wait_worker

ROLLOUTS, STEPS = 6, 6


@pytest.mark.timeout(90)
def test_processed_twice_seen_once(aof_redis, spawn):
    url = aof_redis.url
    slow = spawn("worker", redis_url=url, worker_id="slow", backend={"delay_s": 1.2}, claim_idle_ms=600_000)
    wait_worker(url, "slow", proc=slow)
    fast = spawn("worker", redis_url=url, worker_id="fast", backend={"delay_s": 0.0}, claim_idle_ms=300,
                 claim_every_s=0.1)
    wait_worker(url, "fast", proc=fast)

    async def main():
        r = connect_async(RedisSettings(url=url))
        client = PolicyClient(r, "p", settings=ClientSettings(reply_timeout_s=30, deadline_s=60, max_resends=0))
        seen: dict[int, list[int]] = {}

        async def rollout(i: int) -> None:
            seen[i] = []
            for seq in range(STEPS):
                res = await client.act(f"r{i}", {"tag": np.array([i, seq], np.int64)})
                assert res.chunk["echo"].tolist() == [i, seq]
                seen[i].append(res.seq)
                await asyncio.sleep(0.3)  # let late duplicates of this step land before the next one

        try:
            await asyncio.gather(*[rollout(i) for i in range(ROLLOUTS)])
        finally:
            await r.aclose()
        return seen

    seen = asyncio.run(main())
    assert all(s == list(range(STEPS)) for s in seen.values())
    r = redis.Redis.from_url(url)
    written = {i: [Reply.from_fields(f).seq for _, f in r.xrange(f"rq:rep:{{p#0}}:r{i}")] for i in range(ROLLOUTS)}
    duplicates = sum(len(v) - len(set(v)) for v in written.values())
    assert duplicates > 0, "the test did not make any request run twice"
    assert all(set(v) == set(range(STEPS)) for v in written.values())
    print(f"duplicate reply entries written: {duplicates}; duplicate replies seen by the simulators: 0")
    r.close()
