"""A simulator that dies (SIGKILL) mid-episode loses nothing: its lease expires, the controller
hands the episode back and another simulator re-runs it, so the sweep ends with exactly one final
record per episode. A simulator sent SIGTERM abandons its step cleanly, hands its episodes back at
once (no lease wait) and exits within a bound."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest
import redis

from tests.fault.conftest import wait_for, wait_worker
from tests.fault.sweep import create_sweep, follow_sweep

EPISODES = 6


def _leases(url: str, run: str) -> dict:
    r = redis.Redis.from_url(url)
    try:
        return r.hgetall(f"rq:sweep:{run}:leases")
    finally:
        r.close()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_simulator_dies_mid_episode(aof_redis, spawn, sig):
    url = aof_redis.url
    run = f"simkill-{sig.name.lower()}"
    w = spawn("worker", redis_url=url, worker_id="w0", backend={"delay_s": 0.01})
    wait_worker(url, "w0", proc=w)
    asyncio.run(create_sweep(url, run, EPISODES, lease_s=2.0, max_steps=48))
    victim = spawn("sim", redis_url=url, run=run, sim_id="victim", envs=2)
    wait_for(lambda: any(b'"victim"' in v for v in _leases(url, run).values()), 60, "victim to lease an episode")
    time.sleep(0.5)  # mid-episode
    t0 = time.monotonic()
    victim.signal(sig)
    code = victim.wait(20)
    exit_s = time.monotonic() - t0
    if sig == signal.SIGTERM:
        assert code == 0, victim.log()[-3000:]
        assert exit_s < 10
        # Handed back at once, not after the lease expires.
        assert not any(b'"victim"' in v for v in _leases(url, run).values())
        # what it was running when the signal came (an episode it finished just before is its own)
        held = [int(e) for e in re.findall(r"episode (\d+) abandoned and handed back", victim.log())]
    else:  # a killed simulator's leases stay until the controller expires them: what it held at death
        held = [int(k) for k, v in _leases(url, run).items() if b'"victim"' in v]
    assert held, victim.log()[-3000:]
    spawn("sim", redis_url=url, run=run, sim_id="survivor", envs=2)
    out = asyncio.run(follow_sweep(url, run, EPISODES, timeout_s=120))
    final = out["final"]
    assert sorted(final) == list(range(EPISODES))
    assert all(rec["outcome"] in ("success", "failure") for rec in final.values())
    for ep in held:  # the victim's episodes were re-run by the survivor
        assert final[ep]["sim"] == "survivor"
    if sig == signal.SIGKILL:
        assert out["handed_back"] >= len(held)
    print(f"{sig.name}: exit after {exit_s:.2f}s, victim held {held}, handed back by expiry {out['handed_back']}")
