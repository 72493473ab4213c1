"""Promise 4 (graceful shutdown) and the slow-worker backlog.

SIGTERM a policy worker under load: it stops reading, answers what it already read, exits 0
within a bound, and leaves nothing pending for others to re-claim; no rollout notices. A slow
worker lets the backlog grow in Redis without ever holding more than its in-flight cap, and no
request is trimmed before it was answered."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import numpy as np
import pytest
import redis
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.settings import ClientSettings, RedisSettings

from tests.fault.conftest import wait_for, wait_worker


def consumer_pending(r: redis.Redis, name: str) -> int:
    for c in r.xinfo_consumers("rq:req:{p#0}", "workers"):
        if c["name"] == name.encode():
            return c["pending"]
    return 0


@pytest.mark.timeout(90)
def test_sigterm_worker_under_load(aof_redis, spawn):
    url = aof_redis.url
    a = spawn("worker", redis_url=url, worker_id="A", backend={"delay_s": 0.3}, claim_idle_ms=60_000)
    b = spawn("worker", redis_url=url, worker_id="B", backend={"delay_s": 0.05}, claim_idle_ms=60_000)
    wait_worker(url, "A", proc=a)
    wait_worker(url, "B", proc=b)
    r = redis.Redis.from_url(url)
    result = {}

    def terminator() -> None:
        time.sleep(0.5)
        wait_for(lambda: consumer_pending(r, "A") > 0, 20, "A to hold requests", every=0.005)
        result["held"] = consumer_pending(r, "A")
        t0 = time.monotonic()
        a.signal(signal.SIGTERM)
        result["code"] = a.wait(15)
        result["exit_s"] = time.monotonic() - t0

    async def main():
        rr = connect_async(RedisSettings(url=url))
        # claim_idle_ms is 60 s and no resend within the test: every reply must come from a live answer.
        client = PolicyClient(rr, "p", settings=ClientSettings(reply_timeout_s=60, deadline_s=60, max_resends=0))

        async def rollout(i: int) -> int:
            for seq in range(15):
                res = await client.act(f"r{i}", {"tag": np.array([i, seq], np.int64)})
                assert res.chunk["echo"].tolist() == [i, seq]
            return 15

        try:
            return await asyncio.gather(*[rollout(i) for i in range(16)])
        finally:
            await rr.aclose()

    th = threading.Thread(target=terminator)
    th.start()
    counts = asyncio.run(main())
    th.join()
    assert counts == [15] * 16
    assert result["held"] > 0
    assert result["code"] == 0, a.log()[-3000:]
    assert result["exit_s"] < 5.0
    assert "WORKER-EXIT" in a.log()
    assert consumer_pending(r, "A") == 0  # it answered what it had read; nothing left to re-claim
    assert r.xpending("rq:req:{p#0}", "workers")["pending"] == 0
    print(f"SIGTERM: A held {result['held']} requests, exited {result['code']} after {result['exit_s']:.2f}s")
    r.close()


@pytest.mark.timeout(90)
def test_slow_worker_backlog_never_trimmed_before_ack(aof_redis, spawn):
    url = aof_redis.url
    w = spawn("worker", redis_url=url, worker_id="slow", backend={"delay_s": 0.1}, max_batch_size=4,
              max_inflight=4)
    wait_worker(url, "slow", proc=w)
    r = redis.Redis.from_url(url)
    samples = []
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            samples.append((r.xlen("rq:req:{p#0}"), consumer_pending(r, "slow")))
            time.sleep(0.02)

    async def main():
        rr = connect_async(RedisSettings(url=url))
        client = PolicyClient(rr, "p", settings=ClientSettings(reply_timeout_s=60, deadline_s=60, max_resends=0))
        try:
            return await asyncio.gather(*[client.act(f"r{i}", {"tag": np.array([i, 0], np.int64)})
                                          for i in range(80)])
        finally:
            await rr.aclose()

    th = threading.Thread(target=sampler)
    th.start()
    try:
        results = asyncio.run(main())
    finally:
        done.set()
        th.join()
    assert [x.chunk["echo"].tolist() for x in results] == [[i, 0] for i in range(80)]
    assert all(x.sends == 1 for x in results)  # no request was lost and had to be resent
    assert max(s[0] for s in samples) >= 40  # the backlog grew in Redis ...
    assert max(s[1] for s in samples) <= 4  # ... while the worker held at most its in-flight cap
    assert r.xlen("rq:req:{p#0}") == 0  # answered requests were deleted after their ack
    r.close()


@pytest.mark.timeout(90)
def test_sigterm_cli_policy_worker(aof_redis, spawn, tmp_path):
    """The real `rolloutq policy-worker` command (null backend) under load: SIGTERM -> exit 0."""
    import os
    import subprocess
    import sys

    from tests.fault.conftest import ROOT

    url = aof_redis.url
    b = spawn("worker", redis_url=url, worker_id="B", backend={"delay_s": 0.05}, claim_idle_ms=60_000)
    wait_worker(url, "B", proc=b)
    log = open(tmp_path / "cli.log", "wb")
    cli = subprocess.Popen([sys.executable, "-c", "from rolloutq.controller.cli import app; app()", "policy-worker",
                            "--backend", "null", "--redis-url", url, "--policy", "p", "--worker-id", "CLI",
                            "--max-batch-size", "8"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_worker(url, "CLI", timeout=60)
        r = redis.Redis.from_url(url)
        result = {}

        def terminator() -> None:
            wait_for(lambda: consumer_pending(r, "CLI") > 0 or r.hget("rq:workers:p", "CLI") is None, 20,
                     "load on the CLI worker", every=0.002)
            t0 = time.monotonic()
            cli.send_signal(signal.SIGTERM)
            result["code"] = cli.wait(15)
            result["exit_s"] = time.monotonic() - t0

        async def main():
            rr = connect_async(RedisSettings(url=url))
            client = PolicyClient(rr, "p", settings=ClientSettings(reply_timeout_s=60, deadline_s=60, max_resends=0))

            async def rollout(i: int) -> int:
                for seq in range(30):
                    await client.act(f"c{i}", {"tag": np.array([i, seq], np.int64)})
                return 30

            try:
                return await asyncio.gather(*[rollout(i) for i in range(8)])
            finally:
                await rr.aclose()

        th = threading.Thread(target=terminator)
        th.start()
        counts = asyncio.run(main())
        th.join()
        text = (tmp_path / "cli.log").read_text(errors="replace")
        assert counts == [30] * 8
        assert result["code"] == 0, text[-3000:]
        assert result["exit_s"] < 5.0
        assert "policy worker stopped" in text
        assert consumer_pending(r, "CLI") == 0
        r.close()
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
        log.close()
