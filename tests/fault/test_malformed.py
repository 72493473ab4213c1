"""Promise 6 (bad input never crashes a worker): the malformed-input corpus, fired at a live
worker process over Redis. Each request gets an error reply naming the problem (no traceback, no
internal detail), is acked (and dead-lettered where it cannot be answered), and the worker keeps
serving well-formed requests in between."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis
from rolloutq.broker.codec import encode
from rolloutq.broker.frames import FrameArena
from rolloutq.broker.schema import Reply

from tests.fault.conftest import wait_worker
from tests.fault.corpus import cases, envelope, frame_cases, oversize_case, valid_obs

REPLY_TO = "rq:rep:{p#0}:fuzz"
LEAKS = ("Traceback", 'File "', "/work/", "site-packages", ".py", "0x7f")


def await_reply(r: redis.Redis, last: bytes, seq: int, timeout: float = 10.0) -> tuple[bytes, Reply]:
    """The reply to `seq` (or to a request without a readable seq: -1); fails on any other reply."""
    got = r.xread({REPLY_TO: last}, count=1, block=int(timeout * 1000))
    assert got, "no reply"
    entry_id, fields = got[0][1][0]
    reply = Reply.from_fields(fields)
    assert reply.seq in (seq, -1), f"reply to {reply.seq} while waiting for {seq}: {reply}"
    return entry_id, reply


@pytest.mark.timeout(120)
def test_malformed_corpus_at_live_worker(aof_redis, spawn):
    url = aof_redis.url
    # claim_idle_ms above the slowest read: pulling the 64 MiB oversize entry from Redis takes seconds here.
    w = spawn("worker", redis_url=url, worker_id="w", backend={"strict": True}, claim_idle_ms=20_000)
    wait_worker(url, "w", proc=w)
    r = redis.Redis.from_url(url)
    last = b"0-0"
    seq = 0
    rejected = []
    arena = FrameArena()  # the worker runs on this host: its references reach the checks past the name
    corpus = cases(REPLY_TO) + [("oversize message", oversize_case(REPLY_TO), {"bad_observation"})]
    corpus += frame_cases(REPLY_TO, arena)
    for name, fields, want in corpus:
        if "seq" in fields and fields["seq"] == "0":
            fields["seq"] = str(seq)  # so each reply can be matched to its case
        t0 = time.perf_counter()
        r.xadd("rq:req:{p#0}", fields)
        last, reply = await_reply(r, last, seq)
        took_ms = (time.perf_counter() - t0) * 1000
        assert reply.status in want, f"{name}: got {reply.status} {reply.error!r}"
        assert reply.error and not any(x in reply.error for x in LEAKS), f"{name}: {reply.error!r}"
        rejected.append((name, reply.status, round(took_ms, 1), reply.error[:90]))
        seq += 1
        # The worker keeps serving well-formed requests between bad ones.
        r.xadd("rq:req:{p#0}", envelope(encode(valid_obs(tag=np.array([0, seq], np.int64))), REPLY_TO, seq=seq))
        last, ok = await_reply(r, last, seq)
        assert ok.ok and ok.seq == seq, f"after {name}: {ok}"
        seq += 1
        assert w.alive(), f"worker died on {name}:\n{w.log()[-3000:]}"
    for row in rejected:
        print(row)
    # Envelope errors are dead-lettered (for the operator) as well as answered. A v1 `reply_to` naming
    # another key is ignored: the reply goes to the rollout's own stream, derived by the worker.
    bad_requests = sum(1 for row in rejected if row[1] == "bad_request")
    assert r.xlen("rq:dlq:{p#0}") == bad_requests
    for elsewhere in ("rq:policy:p", "rq:rep:{other#0}:x"):
        r.xadd("rq:req:{p#0}", envelope(encode(valid_obs(tag=np.array([0, seq], np.int64))), elsewhere, seq=seq))
        last, ok = await_reply(r, last, seq)
        assert ok.ok and ok.nonce == f"fuzz-nonce-{seq}"
        seq += 1
    assert r.xlen("rq:dlq:{p#0}") == bad_requests and not r.exists("rq:rep:{other#0}:x")
    assert r.type("rq:policy:p") == b"hash"  # not overwritten by a reply
    assert r.xpending("rq:req:{p#0}", "workers")["pending"] == 0
    assert r.xlen("rq:req:{p#0}") == 0
    assert w.alive()
    assert "Traceback" not in w.log(), w.log()[-3000:]
    arena.close()
    r.close()
