"""Promise 2 (poison messages): a request whose inference crashes the worker process (os._exit, as
a CUDA fault would) or raises reaches the backend exactly N = max_deliveries times, then goes to
the dead-letter stream; its rollout gets an error reply without internal detail (`dead_letter` when
the workers crashed on it, `inference_failed` naming the exception when the model raised), and the
other rollouts keep flowing (crashed workers are restarted, as compose or Ray would)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import redis
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.connection import connect_async
from rolloutq.broker.errors import PolicyErrorReply
from rolloutq.broker.settings import ClientSettings, RedisSettings

from tests.fault.conftest import wait_worker

N = 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["exit", "raise"])
def test_poison_request_dead_lettered_after_exactly_n_deliveries(aof_redis, spawn, tmp_path, mode):
    url = aof_redis.url
    backend = {"poison": mode, "marker_dir": str(tmp_path), "delay_s": 0.02}
    workers = [spawn("worker", redis_url=url, worker_id=f"w{i}", max_deliveries=N, backend=backend)
               for i in range(2)]
    for i, w in enumerate(workers):
        wait_worker(url, f"w{i}", proc=w)
    done = threading.Event()
    restarts = []

    def supervisor() -> None:  # restart crashed workers, as a process supervisor would
        while not done.wait(0.1):
            for i, w in enumerate(workers):
                if not w.alive():
                    restarts.append(w.p.returncode)
                    workers[i] = spawn("worker", redis_url=url, worker_id=f"w{i}r{len(restarts)}",
                                       max_deliveries=N, backend=backend)

    sup = threading.Thread(target=supervisor, daemon=True)
    sup.start()

    async def main():
        r = connect_async(RedisSettings(url=url))
        # max_resends=0 and a long reply timeout: the client must not resend (a resend is a new request).
        client = PolicyClient(r, "p", settings=ClientSettings(reply_timeout_s=50, deadline_s=50, max_resends=0))

        async def good(i: int) -> int:
            n = 0
            for seq in range(25):
                res = await client.act(f"good{i}", {"tag": np.array([i, seq], np.int64)})
                assert res.chunk["echo"].tolist() == [i, seq]
                n += 1
                await asyncio.sleep(0.02)
            return n

        async def bad() -> PolicyErrorReply:
            await asyncio.sleep(0.2)
            with pytest.raises(PolicyErrorReply) as info:
                await client.act("bad", {"poison": np.ones(1, np.float32), "tag": np.array([99, 0], np.int64)})
            return info.value

        try:
            *goods, err = await asyncio.gather(*[good(i) for i in range(6)], bad())
        finally:
            await r.aclose()
        return goods, err

    try:
        goods, err = asyncio.run(main())
    finally:
        done.set()
        sup.join(5)
    assert goods == [25] * 6
    assert err.code == ("dead_letter" if mode == "exit" else "inference_failed")
    assert "secret" not in err.detail and "Traceback" not in err.detail and ".py" not in err.detail
    if mode == "raise":
        assert "RuntimeError: poisoned observation <path> line 42" in err.detail
    attempts = (tmp_path / "poison_attempts").read_text().split()
    assert len(attempts) == N, f"backend saw the poison request {len(attempts)} times, expected {N}"
    if mode == "exit":
        assert len(restarts) == N and all(code == 13 for code in restarts)
    else:
        assert restarts == []
    r = redis.Redis.from_url(url)
    dlq = r.xrange("rq:dlq:{p#0}")
    assert len(dlq) == 1 and dlq[0][1][b"reason"] == err.code.encode()
    assert r.xpending("rq:req:{p#0}", "workers")["pending"] == 0
    r.close()
