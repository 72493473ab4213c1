"""Promise 5 (Redis restarts): kill -9 Redis under load and start it again on the same port.

With AOF (`appendonly yes`, `appendfsync everysec`) a whole evaluation sweep (policy worker +
two simulator processes) finishes with exactly one final record per episode: clients and workers
reconnect with backoff, lost requests are resent, lost acks are re-claimed, lost leases are handed
back. Without persistence the consumer group vanishes with the data: the worker recreates it on
NOGROUP and rollouts in flight resume after their client resends."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import redis
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.embedded import EmbeddedRedis
from rolloutq.broker.settings import ClientSettings, RedisSettings

from tests.fault.conftest import redis_binary, wait_for, wait_worker
from tests.fault.sweep import create_sweep, follow_sweep

EPISODES = 8


def start_sweep(spawn, url: str, run: str, episodes: int, delay_s: float, max_steps: int) -> tuple:
    """A policy worker, a sweep (3 s leases) and two simulator processes; returns (worker, sims)
    once the first episode is done, i.e. with the sweep well under way."""
    w = spawn("worker", redis_url=url, worker_id="w0", backend={"delay_s": delay_s})
    wait_worker(url, "w0", proc=w)
    asyncio.run(create_sweep(url, run, episodes, lease_s=3.0, max_steps=max_steps))
    sims = [spawn("sim", redis_url=url, run=run, sim_id=f"s{i}", envs=2, reply_timeout_s=2.0) for i in range(2)]
    r = redis.Redis.from_url(url)
    wait_for(lambda: r.xlen(f"rq:sweep:{run}:results") >= 1, 60, "a first episode")
    r.close()
    return w, sims


def restart(server: EmbeddedRedis, down_s: float, appendonly: bool) -> EmbeddedRedis:
    server.kill()
    time.sleep(down_s)
    fresh = EmbeddedRedis(binary=server.binary or redis_binary(), port=server.port, dir=server.dir,
                          appendonly=appendonly, appendfsync=server.appendfsync)
    return fresh.start()


@pytest.mark.timeout(150)
def test_sweep_survives_redis_kill9_with_aof(aof_redis, spawn):
    url = aof_redis.url
    run = "redis-kill"
    w, sims = start_sweep(spawn, url, run, EPISODES, delay_s=0.01, max_steps=40)
    servers = [aof_redis]

    def killer() -> None:
        servers.append(restart(aof_redis, 1.0, appendonly=True))

    th = threading.Thread(target=killer)
    th.start()
    try:
        out = asyncio.run(follow_sweep(url, run, EPISODES, timeout_s=120))
        th.join()
        final = out["final"]
        assert sorted(final) == list(range(EPISODES))
        assert all(rec["outcome"] in ("success", "failure") for rec in final.values()), \
            [rec["error"] for rec in final.values()]
        for s in sims:
            assert s.wait(30) == 0, s.log()[-3000:]
        assert w.alive(), w.log()[-3000:]
    finally:
        th.join()
        if len(servers) > 1:
            servers[-1].stop()
    print(f"records seen {len(out['seen'])} for {EPISODES} episodes; handed back {out['handed_back']}")


@pytest.mark.timeout(90)
def test_group_recreated_after_restart_without_persistence(tmp_path, spawn):
    data = tmp_path / "redis"
    data.mkdir()
    server = EmbeddedRedis(binary=redis_binary(), dir=str(data), appendonly=False).start()
    servers = [server]
    url = server.url
    w = spawn("worker", redis_url=url, worker_id="w0", backend={"delay_s": 0.01})
    wait_worker(url, "w0", proc=w)

    def killer() -> None:
        time.sleep(1.0)
        servers.append(restart(server, 0.5, appendonly=False))

    async def main():
        r = connect_async(RedisSettings(url=url))
        client = PolicyClient(r, "p", settings=ClientSettings(reply_timeout_s=1.0, deadline_s=30, max_resends=30,
                                                              backoff_s=0.05))

        async def rollout(i: int) -> int:
            for seq in range(40):
                res = await client.act(f"r{i}", {"tag": np.array([i, seq], np.int64)})
                assert res.chunk["echo"].tolist() == [i, seq]
                await asyncio.sleep(0.05)
            return 40

        try:
            return await asyncio.gather(*[rollout(i) for i in range(8)])
        finally:
            await r.aclose()

    th = threading.Thread(target=killer)
    th.start()
    try:
        counts = asyncio.run(main())
    finally:
        th.join()
    try:
        assert counts == [40] * 8
        assert len(servers) == 2
        r = redis.Redis.from_url(url)
        assert [g["name"] for g in r.xinfo_groups("rq:req:{p#0}")] == [b"workers"]
        r.close()
        assert w.alive()
    finally:
        for s in servers:
            s.cleanup()
