"""`rolloutq eval`'s own result loop (`controller.eval._follow`, not the fault tests' stand-in)
rides out a Redis kill -9 and restart longer than its client's own retries: it says so, waits,
and ends with one final record per episode, the sweep run by a real policy worker and two
simulator processes."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from rich.console import Console

from broker.connection import connect_async
from broker.keys import Keys
from broker.settings import RedisSettings
from broker.sweep import SweepQueue
from controller.eval import EvalSettings, _follow
from tests.fault.test_redis_restart import restart, start_sweep

EPISODES = 16


@pytest.mark.timeout(150)
def test_eval_result_loop_rides_out_a_redis_restart(aof_redis, spawn):
    url = aof_redis.url
    run = "eval-follow"
    start_sweep(spawn, url, run, EPISODES, delay_s=0.03, max_steps=80)
    servers = [aof_redis]
    killer = threading.Thread(target=lambda: servers.append(restart(aof_redis, 1.5, appendonly=True)))
    out = io.StringIO()

    async def follow() -> list[dict]:
        # no client-level retries: redis-py's own (8 by default, ~7 s) would hide a short outage from
        # the loop; here the loop itself must notice, wait and carry on
        conn = connect_async(RedisSettings(url=url, connect_retries=0))
        try:
            killer.start()
            settings = EvalSettings(episodes=EPISODES, policy="p", progress=False, timeout_s=120)
            records, _ = await _follow(settings, Console(file=out, width=200), conn, Keys(), SweepQueue(conn, run),
                                       actors=[], runs={}, ray=None)
            return records
        finally:
            await conn.aclose()

    try:
        records = asyncio.run(follow())
        killer.join()
    finally:
        for s in servers[1:]:
            s.stop()
    text = out.getvalue()
    assert "Redis unreachable" in text and "Redis is back" in text, text
    assert sorted(int(rec["episode"]) for rec in records) == list(range(EPISODES))
    assert all(rec["status"] == "ok" for rec in records), [rec.get("error") for rec in records]
