"""Promise 3 (deadlines): a worker skips a request whose deadline passed while it queued and
answers `expired` without running the model; a client never waits forever: with no worker it
resends a bounded number of times then raises `PolicyTimeout`, with Redis gone it raises
`RedisUnavailable` before its deadline, and the runner records such an episode as an
infrastructure failure, never as a policy failure."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import redis
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.codec import encode
from rolloutq.broker.connection import connect_async
from rolloutq.broker.embedded import free_port
from rolloutq.broker.errors import PolicyTimeout, RedisUnavailable
from rolloutq.broker.schema import Reply
from rolloutq.broker.settings import ClientSettings, RedisSettings
from rolloutq.sim_workers.runner import EnvSlot, run_episode
from rolloutq.sim_workers.tasks import make_task

from tests.fault.conftest import wait_worker
from tests.fault.corpus import envelope


@pytest.mark.timeout(60)
def test_expired_request_skipped_with_error_reply(aof_redis, spawn):
    url = aof_redis.url
    w = spawn("worker", redis_url=url, worker_id="w", backend={"delay_s": 0.5}, max_batch_size=1, max_inflight=1)
    wait_worker(url, "w", proc=w)
    r = redis.Redis.from_url(url)
    obs = encode({"tag": np.array([0, 0], np.int64)})
    r.xadd("rq:req:{p#0}", envelope(obs, "", seq=0, rollout="slow"))
    r.xadd("rq:req:{p#0}", envelope(obs, "", seq=0, rollout="late", ttl_ms="100"))
    got = r.xread({"rq:rep:{p#0}:late": "0-0"}, block=10_000)
    reply = Reply.from_fields(got[0][1][0][1])
    assert reply.status == "expired" and "deadline" in reply.error
    assert r.xread({"rq:rep:{p#0}:slow": "0-0"}, block=10_000)
    time.sleep(0.5)
    stats = json.loads(r.hget("rq:workers:p", "w"))
    assert stats["served_total"] == 1  # the expired request never reached the model
    assert stats["errors_total"] == {"expired": 1}
    r.close()


@pytest.mark.timeout(30)
def test_client_without_worker_times_out_after_bounded_resends(redis_url):
    async def main():
        r = connect_async(RedisSettings(url=redis_url))
        client = PolicyClient(r, "nobody", settings=ClientSettings(reply_timeout_s=0.3, deadline_s=20,
                                                                   max_resends=2))
        t0 = time.perf_counter()
        with pytest.raises(PolicyTimeout) as info:
            await client.act("r", {"x": np.zeros(1, np.float32)})
        took = time.perf_counter() - t0
        n = await r.xlen("rq:req:{nobody#0}")  # what is left of its sends
        await r.aclose()
        return took, n, str(info.value)

    took, left, msg = asyncio.run(main())
    assert left == 0 and 0.8 < took < 3.0  # giving up, the client deleted its 3 sends
    assert "3 sends" in msg and "policy workers running" in msg


@pytest.mark.timeout(30)
def test_client_with_redis_gone_gives_up_before_deadline():
    async def main():
        r = connect_async(RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=1.0,
                                        connect_retries=2))
        client = PolicyClient(r, "p", settings=ClientSettings(deadline_s=3.0, backoff_s=0.05))
        t0 = time.perf_counter()
        with pytest.raises(RedisUnavailable):
            await client.act("r", {"x": np.zeros(1, np.float32)})
        await r.aclose()
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 10  # bounded by the 3 s deadline plus backoff, never unbounded


@pytest.mark.timeout(60)
def test_episode_without_policy_is_infra_not_failure(redis_url):
    async def main():
        r = connect_async(RedisSettings(url=redis_url))
        client = PolicyClient(r, "nobody", settings=ClientSettings(reply_timeout_s=0.2, deadline_s=5,
                                                                   max_resends=1))
        slot = EnvSlot(make_task("reach", image_size=32, max_steps=20), "t")
        try:
            return await run_episode(slot, client, episode=0, seed=1, rollout_id="e0", action_horizon=8)
        finally:
            await slot.close()
            await r.aclose()

    record = asyncio.run(main())
    assert record.outcome == "infra" and record.reason == "policy_timeout" and not record.success
    assert "no reply" in record.error


def test_client_backoff_is_bounded_and_jittered():
    from rolloutq.broker.client_core import backoff

    for attempt in range(12):
        values = {round(backoff(0.1, attempt), 6) for _ in range(50)}
        assert len(values) > 1  # jitter
        assert max(values) <= 0.1 * 2 ** min(attempt, 6) * 1.5  # bounded (cap at 2^6 x base)
