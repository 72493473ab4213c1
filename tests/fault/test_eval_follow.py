"""`rolloutq eval`'s own result loop (`rolloutq.controller.follow.follow_sweep`, not the fault tests' stand-in)
rides out a Redis kill -9 and restart longer than its client's own retries: it says so, waits,
and ends with one final record per episode, the sweep run by a real policy worker and two
simulator processes. Results that are malformed, forged or repeated are rejected and counted
while a whole external run (`_drive`) goes on to write its summary."""

from __future__ import annotations

import asyncio
import io
import json
import threading

import pytest
import redis
from rich.console import Console
from rolloutq.broker.connection import connect_async
from rolloutq.broker.keys import Keys
from rolloutq.broker.settings import RedisSettings
from rolloutq.broker.sweep import SweepQueue
from rolloutq.controller.eval import EvalSettings, run_eval
from rolloutq.controller.follow import follow_sweep

from tests.fault.conftest import wait_for, wait_worker
from tests.fault.sweep import create_sweep
from tests.fault.test_redis_restart import restart

EPISODES = 16


@pytest.mark.timeout(150)
def test_eval_result_loop_rides_out_a_redis_restart(aof_redis, spawn):
    url = aof_redis.url
    run = "eval-follow"
    w = spawn("worker", redis_url=url, worker_id="w0", backend={"delay_s": 0.03})
    wait_worker(url, "w0", proc=w)
    intake = asyncio.run(create_sweep(url, run, EPISODES, lease_s=3.0, max_steps=80))
    [spawn("sim", redis_url=url, run=run, sim_id=f"s{i}", envs=2, reply_timeout_s=2.0) for i in range(2)]
    r = redis.Redis.from_url(url)
    wait_for(lambda: r.xlen(f"rq:sweep:{run}:results") >= 1, 60, "a first episode")  # well under way
    r.close()
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
            records, _ = await follow_sweep(settings, Console(file=out, width=200), conn, Keys(), SweepQueue(conn, run),
                                            actors=[], runs={}, ray=None, intake=intake)
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
    assert all(rec["outcome"] in ("success", "failure") for rec in records), [rec.get("error") for rec in records]


GOOD = {"episode": 0, "seed": 0, "attempt": 1, "outcome": "success", "reason": "", "success": True,
        "episode_return": 1.0, "steps": 3, "wall_s": 0.1, "started_at": 1.0, "policy_calls": 1,
        "round_trip_ms": [1.0], "batch_sizes": [1], "sim": "s0", "error": ""}


def _forge(url: str, run: str, stop: threading.Event) -> list[str]:
    """What a broken or hostile simulator writes to a running sweep's results: four malformed or
    forged records at once, then a copy (token included) of the first genuine result."""
    r = redis.Redis.from_url(url)
    results = f"rq:sweep:{run}:results"
    wait_for(lambda: r.exists(f"rq:sweep:{run}:meta"), 60, "the sweep")
    without_started_at = {k: v for k, v in GOOD.items() if k != "started_at"}
    r.xadd(results, {"record": json.dumps(without_started_at), "token": "x"})
    r.xadd(results, {"record": b"\x93\x01 not json", "token": "x"})
    r.xadd(results, {"record": json.dumps({**GOOD, "steps": "3"}), "token": "x"})
    r.xadd(results, {"record": json.dumps(GOOD), "token": "0" * 32})
    sent = ["missing started_at", "not JSON", "steps a string", "bad token"]
    while not stop.is_set():
        genuine = [f for _, f in r.xrange(results) if len(f.get(b"token", b"")) == 32 and f[b"token"] != b"0" * 32]
        if genuine:
            r.xadd(results, genuine[0])
            sent.append("duplicate")
            break
        stop.wait(0.01)
    r.close()
    return sent


@pytest.mark.timeout(180)
def test_eval_rejects_malformed_and_forged_results_and_still_writes_its_summary(redis_url, spawn, tmp_path):
    """A result without `started_at` used to crash the controller after it had set `:stop`, with no
    summary written. Now every bad entry is rejected with one line per reason, counted in
    summary.json, and the run ends normally; its keys go at once with sweep_ttl_s=0."""
    run, episodes = "intake", 6
    w = spawn("worker", redis_url=redis_url, worker_id="w0", backend={"delay_s": 0.02})
    wait_worker(redis_url, "w0", proc=w)
    sims = [spawn("sim", redis_url=redis_url, run=run, sim_id=f"s{i}", envs=2) for i in range(2)]
    stop, sent = threading.Event(), []
    forger = threading.Thread(target=lambda: sent.extend(_forge(redis_url, run, stop)))
    forger.start()
    out = io.StringIO()
    settings = EvalSettings(episodes=episodes, out=tmp_path / "out", task="reach", backend="null", policy="p",
                            task_options={"image_size": 32, "max_steps": 60}, mode="external", run_id=run,
                            redis=RedisSettings(url=redis_url), progress=False, timeout_s=120, video_episodes=0,
                            sweep_ttl_s=0)
    try:
        summary = run_eval(settings, Console(file=out, width=200))
    finally:
        stop.set()
        forger.join(30)
    text = out.getvalue()
    assert sent == ["missing started_at", "not JSON", "steps a string", "bad token", "duplicate"], sent
    assert summary["rejected_results"] == {"malformed": 3, "bad_token": 1, "duplicate": 1}, (summary, text)
    assert summary["episodes"] == episodes
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["rejected_results"] == summary["rejected_results"]
    assert text.count("rejected a result (malformed)") == 1, text  # once per reason, then only counted
    assert "field 'started_at' is missing" in text and "rejected a result (bad_token)" in text, text
    for s in sims:
        assert s.wait(30) == 0, s.log()[-3000:]
    r = redis.Redis.from_url(redis_url)
    assert r.exists(f"rq:sweep:{run}:results", f"rq:sweep:{run}:meta") == 0  # sweep_ttl_s=0
    assert r.exists(f"rq:sweep:{run}:stop") == 1
