"""Promise 1 (at-least-once, exactly one reply seen): SIGKILL a policy worker while it holds read,
unacked requests of 32 running rollouts; a live worker re-claims them and every step of every
rollout gets exactly one reply, answering the request it claims to."""

from __future__ import annotations

import asyncio
import signal
import time

import numpy as np
import pytest
import redis
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.schema import Reply
from rolloutq.broker.settings import ClientSettings, RedisSettings

from tests.fault.conftest import wait_for, wait_worker

ROLLOUTS = 32
STEPS = 12


async def drive(url: str, rollouts: int, steps: int, client_settings: ClientSettings) -> dict:
    r = connect_async(RedisSettings(url=url))
    client = PolicyClient(r, "p", settings=client_settings)
    seen: dict[str, list[int]] = {}

    async def rollout(i: int) -> None:
        name = f"r{i}"
        seen[name] = []
        for seq in range(steps):
            res = await client.act(name, {"tag": np.array([i, seq], np.int64)})
            assert res.seq == seq
            assert res.chunk["echo"].tolist() == [i, seq], "reply answers another request"
            seen[name].append(res.seq)

    try:
        await asyncio.gather(*[rollout(i) for i in range(rollouts)])
    finally:
        await r.aclose()
    return seen


def raw_replies(url: str, rollouts: int) -> dict[str, list[int]]:
    r = redis.Redis.from_url(url)
    out = {}
    for i in range(rollouts):
        out[f"r{i}"] = [Reply.from_fields(f).seq for _, f in r.xrange(f"rq:rep:{{p#0}}:r{i}")]
    r.close()
    return out


@pytest.mark.timeout(90)
def test_sigkill_worker_between_read_and_ack(aof_redis, spawn):
    url = aof_redis.url
    a = spawn("worker", redis_url=url, worker_id="A", backend={"delay_s": 0.15})
    b = spawn("worker", redis_url=url, worker_id="B", backend={"delay_s": 0.15})
    wait_worker(url, "A", proc=a)
    wait_worker(url, "B", proc=b)
    r = redis.Redis.from_url(url)
    pending_at_kill = {}

    def killer() -> None:
        # Kill A as soon as it holds delivered-but-unacked requests (between XREADGROUP and XACK).
        def a_holds() -> int:
            for c in r.xinfo_consumers("rq:req:{p#0}", "workers"):
                if c["name"] == b"A" and c["pending"] > 0:
                    return c["pending"]
            return 0

        time.sleep(0.5)
        wait_for(a_holds, 20, "worker A to hold pending requests", every=0.005)
        a.signal(signal.SIGKILL)
        pending_at_kill["A"] = a_holds()
        pending_at_kill["t"] = time.monotonic()

    async def main():
        loop = asyncio.get_running_loop()
        kill = loop.run_in_executor(None, killer)
        seen = await drive(url, ROLLOUTS, STEPS, ClientSettings(reply_timeout_s=10, deadline_s=60, max_resends=3))
        await kill
        return seen

    seen = asyncio.run(main())
    assert a.wait(5) == -signal.SIGKILL
    assert pending_at_kill["A"] > 0
    assert all(s == list(range(STEPS)) for s in seen.values())  # exactly one reply seen per step
    # Nothing is left pending: A's requests were re-claimed by B and answered.
    assert r.xpending("rq:req:{p#0}", "workers")["pending"] == 0
    raw = raw_replies(url, ROLLOUTS)
    assert all(set(s) == set(range(STEPS)) for s in raw.values())
    r.close()
