"""Reliability figures for docs/RELIABILITY.md, measured with real processes and real signals.

    PYTHONPATH=. python benchmarks/reliability.py                 # everything, ~4 min on 2 cores
    PYTHONPATH=. python benchmarks/reliability.py --only kill      # one section: kill|redis|malformed|oversize|acl

Writes benchmarks/out/reliability.json (and prints it). Sections:

- kill: SIGKILL a policy worker while it holds read-but-unacked requests of 16 running rollouts,
  `--trials` times (default 20): replies lost, duplicate replies seen by the simulators, duplicate
  reply entries written, and per-request redelivery time (kill -> the request left the pending
  list, i.e. a live worker re-claimed, answered and acked it) with claim_idle_ms=500,
  claim_every_s=0.2.
- redis: kill -9 Redis while a writer XADDs 16 KiB requests as fast as it can, restart it on the
  same data dir, and count the writes Redis had acknowledged that are gone, per fsync mode (no
  AOF, appendfsync everysec, appendfsync always); then the same kill with a worker and 16
  rollouts running: steps lost end to end after the clients' resends.
- malformed: the tests/fault corpus at a live worker process: tried, rejected with an error reply,
  worker crashes, internal detail leaked.
- oversize: time and memory to reject a message one byte over the 64 MiB codec cap, in the codec
  and end to end through a live worker, and Redis refusing it earlier with proto-max-bulk-len.
- acl: the denial matrix of tests/fault/test_access.py against the shipped ACL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rolloutq.broker.client import PolicyClient  # noqa: E402
from rolloutq.broker.codec import CodecLimits, MsgpackNumpyCodec  # noqa: E402
from rolloutq.broker.connection import connect_async  # noqa: E402
from rolloutq.broker.embedded import EmbeddedRedis, free_port  # noqa: E402
from rolloutq.broker.errors import CodecError  # noqa: E402
from rolloutq.broker.schema import Reply  # noqa: E402
from rolloutq.broker.settings import ClientSettings, RedisSettings  # noqa: E402

from tests.fault.conftest import REDIS7, Proc, wait_for, wait_worker  # noqa: E402

LOGS = Path(tempfile.mkdtemp(prefix="rq-reliability-"))
_procs: list[Proc] = []


def spawn(role: str, **cfg) -> Proc:
    p = Proc(role, cfg, LOGS / f"{role}-{len(_procs)}.log")
    _procs.append(p)
    return p


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


def server(appendonly: bool = True, fsync: str = "everysec", port: int = 0, data: str | None = None,
           extra: list[str] | None = None) -> EmbeddedRedis:
    return EmbeddedRedis(binary=REDIS7, port=port or free_port(), dir=data or tempfile.mkdtemp(dir=LOGS),
                         appendonly=appendonly, appendfsync=fsync, extra_args=extra or []).start()


# -- kill ---------------------------------------------------------------------------------------
async def _rollouts(url: str, prefix: str, n: int, steps: int, settings: ClientSettings, pace_s: float = 0.0) -> dict:
    r = connect_async(RedisSettings(url=url))
    client = PolicyClient(r, "p", settings=settings)
    out = {"ok": 0, "failed": 0, "wrong": 0, "resends": 0, "seen_duplicates": 0}

    async def one(i: int) -> None:
        returned: list[int] = []
        for seq in range(steps):
            try:
                res = await client.act(f"{prefix}{i}", {"tag": np.array([i, seq], np.int64)})
            except Exception:
                out["failed"] += 1
                return
            out["ok"] += 1
            returned.append(res.seq)
            out["resends"] += res.sends - 1
            if res.chunk["echo"].tolist() != [i, seq] or res.seq != seq:
                out["wrong"] += 1
            if pace_s:
                await asyncio.sleep(pace_s)  # env time between policy queries
        out["seen_duplicates"] += len(returned) - len(set(returned))  # one step answered twice

    try:
        await asyncio.gather(*[one(i) for i in range(n)])
    finally:
        await r.aclose()
    return out


def bench_kill(trials: int) -> dict:
    srv = server()
    url = srv.url
    b = spawn("worker", redis_url=url, worker_id="B", backend={"delay_s": 0.1})
    wait_worker(url, "B", proc=b)
    r = redis.Redis.from_url(url)
    redelivery_ms: list[float] = []
    totals = {"steps": 0, "lost": 0, "wrong": 0, "seen_duplicates": 0, "written_duplicates": 0, "held_at_kill": 0}
    rollouts, steps = 16, 10
    for t in range(trials):
        a_id = f"A{t}"
        a = spawn("worker", redis_url=url, worker_id=a_id, backend={"delay_s": 0.1})
        wait_worker(url, a_id, proc=a)
        info: dict = {}

        def killer(a=a, a_id=a_id, info=info) -> None:
            def held() -> list:
                return r.xpending_range("rq:req:{p#0}", "workers", "-", "+", 1000, consumername=a_id)

            time.sleep(0.3)
            wait_for(held, 20, "A to hold requests", every=0.002)
            os.kill(a.pid, signal.SIGKILL)
            t_kill = time.perf_counter()
            ids = [e["message_id"] for e in held()]
            info["held"] = len(ids)
            left = set(ids)
            while left and time.perf_counter() - t_kill < 30:
                for mid in list(left):
                    if not r.xpending_range("rq:req:{p#0}", "workers", mid, mid, 1):
                        left.discard(mid)
                        redelivery_ms.append((time.perf_counter() - t_kill) * 1000)
                time.sleep(0.002)

        th = threading.Thread(target=killer)
        th.start()
        out = asyncio.run(_rollouts(url, f"t{t}r", rollouts, steps,
                                    ClientSettings(reply_timeout_s=10, deadline_s=60, max_resends=3)))
        th.join()
        a.wait(5)
        totals["steps"] += rollouts * steps
        totals["lost"] += rollouts * steps - out["ok"]
        totals["wrong"] += out["wrong"]
        totals["seen_duplicates"] += out["seen_duplicates"]
        totals["held_at_kill"] += info.get("held", 0)
        for i in range(rollouts):
            seqs = [Reply.from_fields(f).seq for _, f in r.xrange(f"rq:rep:{{p#0}}:t{t}r{i}")]
            totals["written_duplicates"] += len(seqs) - len(set(seqs))
    r.close()
    b.signal(signal.SIGTERM)
    b.wait(15)
    srv.cleanup()
    return {
        "trials": trials, "rollouts": rollouts, "steps_per_rollout": steps, "claim_idle_ms": 500,
        "claim_every_s": 0.2, "backend_batch_s": 0.1,
        "steps_total": totals["steps"], "replies_lost": totals["lost"],
        "wrong_replies": totals["wrong"], "duplicate_replies_seen_by_simulators": totals["seen_duplicates"],
        "duplicate_reply_entries_written": totals["written_duplicates"],
        "requests_held_by_killed_worker": totals["held_at_kill"],
        "redelivery_ms": {"n": len(redelivery_ms), "p50": pct(redelivery_ms, 0.5), "p99": pct(redelivery_ms, 0.99),
                          "max": pct(redelivery_ms, 1.0)},
    }


# -- redis --------------------------------------------------------------------------------------
def _writer_until_error(url: str, stop: threading.Event, acked: list, payload: bytes) -> None:
    r = redis.Redis.from_url(url, retry=None, socket_timeout=2)
    try:
        while not stop.is_set():
            acked.append(r.xadd("rq:req:{w#0}", {"obs": payload}))
    except Exception:
        pass


def bench_redis(trials: int) -> dict:
    out: dict = {}
    payload = os.urandom(16 * 1024)
    for mode, appendonly, fsync in (("no-aof", False, "everysec"), ("everysec", True, "everysec"),
                                    ("always", True, "always")):
        rows = []
        for _ in range(trials):
            srv = server(appendonly=appendonly, fsync=fsync)
            stop = threading.Event()
            acked: list[list[bytes]] = [[] for _ in range(4)]
            ths = [threading.Thread(target=_writer_until_error, args=(srv.url, stop, acked[i], payload))
                   for i in range(4)]
            for th in ths:
                th.start()
            time.sleep(1.5)
            srv.kill()
            stop.set()
            for th in ths:
                th.join()
            t0 = time.perf_counter()
            again = server(appendonly=appendonly, fsync=fsync, port=srv.port, data=srv.dir)
            restart_s = time.perf_counter() - t0
            r = redis.Redis.from_url(again.url)
            present = {e for e, _ in r.xrange("rq:req:{w#0}")} if r.exists("rq:req:{w#0}") else set()
            r.close()
            again.cleanup()
            srv.cleanup()
            all_acked = [x for a in acked for x in a]
            lost = [x for x in all_acked if x not in present]
            lost_ms = 0.0
            if lost:
                ms = lambda e: int(e.split(b"-")[0])  # noqa: E731
                lost_ms = max(ms(x) for x in all_acked) - min(ms(x) for x in lost)
            rows.append({"acked": len(all_acked), "lost": len(lost), "lost_window_ms": lost_ms,
                         "restart_s": round(restart_s, 2)})
        out[mode] = {"trials": rows, "acked_writes_total": sum(x["acked"] for x in rows),
                     "acked_writes_lost_total": sum(x["lost"] for x in rows),
                     "writes_per_s": round(statistics.mean(x["acked"] for x in rows) / 1.5),
                     "max_lost_window_ms": max(x["lost_window_ms"] for x in rows)}
    out["end_to_end"] = {}
    for mode, appendonly, fsync in (("no-aof", False, "everysec"), ("everysec", True, "everysec"),
                                    ("always", True, "always")):
        srv = server(appendonly=appendonly, fsync=fsync)
        w = spawn("worker", redis_url=srv.url, worker_id="w", backend={"delay_s": 0.01})
        wait_worker(srv.url, "w", proc=w)
        box: list = []

        def killer(srv=srv, box=box, appendonly=appendonly, fsync=fsync) -> None:
            time.sleep(1.0)
            box.append(time.perf_counter())
            srv.kill()
            time.sleep(0.5)
            box.append(server(appendonly=appendonly, fsync=fsync, port=srv.port, data=srv.dir))

        th = threading.Thread(target=killer)
        th.start()
        t_start = time.perf_counter()
        res = asyncio.run(_rollouts(srv.url, "e", 16, 40, ClientSettings(reply_timeout_s=1.0, deadline_s=30,
                                                                         max_resends=30, backoff_s=0.05), pace_s=0.05))
        t_end = time.perf_counter()
        th.join()
        t_kill = box.pop(0)
        out["end_to_end"][mode] = {"steps": 16 * 40, "steps_lost": 16 * 40 - res["ok"], "wrong": res["wrong"],
                                   "client_resends": res["resends"], "worker_alive": w.alive(),
                                   "killed_at_s": round(t_kill - t_start, 2), "run_s": round(t_end - t_start, 2)}
        w.signal(signal.SIGTERM)
        w.wait(15)
        for s in box:
            s.cleanup()
        srv.cleanup()
    return out


# -- malformed ----------------------------------------------------------------------------------
def bench_malformed() -> dict:
    from tests.fault.corpus import cases

    srv = server()
    w = spawn("worker", redis_url=srv.url, worker_id="w", backend={"strict": True}, claim_idle_ms=20_000)
    wait_worker(srv.url, "w", proc=w)
    r = redis.Redis.from_url(srv.url)
    reply_to = "rq:rep:{p#0}:fuzz"
    last = b"0-0"
    tried = rejected = leaked = 0
    by_status: dict[str, int] = {}
    times = []
    for i, (_, fields, want) in enumerate(cases(reply_to)):
        if fields.get("seq") == "0":
            fields["seq"] = str(i)
        t0 = time.perf_counter()
        r.xadd("rq:req:{p#0}", fields)
        got = r.xread({reply_to: last}, count=1, block=10_000)
        tried += 1
        if not got:
            continue
        last, f = got[0][1][0]
        times.append((time.perf_counter() - t0) * 1000)
        reply = Reply.from_fields(f)
        by_status[reply.status] = by_status.get(reply.status, 0) + 1
        if reply.status in want:
            rejected += 1
        if any(x in reply.error for x in ("Traceback", 'File "', ".py", "/work/")):
            leaked += 1
    alive = w.alive()
    r.close()
    w.signal(signal.SIGTERM)
    w.wait(15)
    srv.cleanup()
    return {"tried": tried, "rejected_with_named_error": rejected, "worker_crashes": 0 if alive else 1,
            "internal_detail_leaked": leaked, "by_status": by_status,
            "reject_round_trip_ms": {"p50": pct(times, 0.5), "p99": pct(times, 0.99)}}


# -- oversize -----------------------------------------------------------------------------------
def bench_oversize() -> dict:
    from tests.fault.corpus import oversize_case

    lim = CodecLimits()
    data = b"\x00" * (lim.max_bytes + 1)
    codec = MsgpackNumpyCodec()
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        codec.decode(data)
    except CodecError:
        pass
    codec_us = (time.perf_counter() - t0) * 1e6
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    srv = server()
    w = spawn("worker", redis_url=srv.url, worker_id="w", backend={"strict": True}, claim_idle_ms=60_000)
    wait_worker(srv.url, "w", proc=w)
    proc = psutil.Process(w.pid)
    rss0 = proc.memory_info().rss
    r = redis.Redis.from_url(srv.url)
    fields = oversize_case("rq:rep:{p#0}:big")
    t0 = time.perf_counter()
    r.xadd("rq:req:{p#0}", fields)
    t_added = time.perf_counter()
    got = r.xread({"rq:rep:{p#0}:big": "0-0"}, block=60_000)
    t_reply = time.perf_counter()
    reply = Reply.from_fields(got[0][1][0][1])
    time.sleep(0.3)
    rss1 = proc.memory_info().rss
    r.close()
    w.signal(signal.SIGTERM)
    w.wait(15)
    srv.cleanup()

    capped = server(extra=["--proto-max-bulk-len", str(lim.max_bytes)])
    r = redis.Redis.from_url(capped.url, retry=None)
    t0c = time.perf_counter()
    try:
        r.xadd("rq:req:{p#0}", fields)
        refused = "accepted"
    except redis.exceptions.RedisError as e:
        refused = type(e).__name__ + ": " + str(e)[:80]
    redis_refuse_ms = (time.perf_counter() - t0c) * 1000
    r.close()
    capped.cleanup()
    return {
        "size_bytes": len(data), "cap_bytes": lim.max_bytes,
        "codec_reject_us": round(codec_us, 1), "codec_peak_alloc_bytes": peak,
        "worker_reply": reply.status, "worker_error": reply.error,
        "xadd_ms": round((t_added - t0) * 1000, 1), "xadd_to_error_reply_ms": round((t_reply - t_added) * 1000, 1),
        "worker_rss_delta_mib": round((rss1 - rss0) / 2**20, 1),
        "redis_proto_max_bulk_len": {"result": refused, "ms": round(redis_refuse_ms, 1)},
    }


# -- acl ----------------------------------------------------------------------------------------
def bench_acl() -> dict:
    from tests.fault.test_access import ROLES, check_denials, render_acl

    passwords = {role: secrets.token_urlsafe(16) for role in ROLES}
    acl = LOGS / "users.acl"
    acl.write_text(render_acl(passwords))
    srv = server(appendonly=False, extra=["--aclfile", str(acl)])
    urls = {role: f"redis://{role}:{p}@127.0.0.1:{srv.port}/0" for role, p in passwords.items()}
    tried, refused, allowed = check_denials(urls)
    srv.cleanup()
    return {"tried": tried, "refused": refused, "not_refused": allowed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["kill", "redis", "malformed", "oversize", "acl"], action="append")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--redis-trials", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/reliability.json")
    args = ap.parse_args()
    sections = args.only or ["kill", "redis", "malformed", "oversize", "acl"]
    results: dict = {}
    if args.out.exists():
        results = json.loads(args.out.read_text())
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "redis": subprocess.run([REDIS7 or "redis-server", "--version"], capture_output=True,
                                                  text=True).stdout.split()[2]}
    try:
        for name in sections:
            t0 = time.perf_counter()
            if name == "kill":
                results["kill"] = bench_kill(args.trials)
            elif name == "redis":
                results["redis"] = bench_redis(args.redis_trials)
            elif name == "malformed":
                results["malformed"] = bench_malformed()
            elif name == "oversize":
                results["oversize"] = bench_oversize()
            elif name == "acl":
                results["acl"] = bench_acl()
            results[name]["section_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps({name: results[name]}, indent=1), flush=True)
    finally:
        for p in _procs:
            if p.alive():
                p.signal(signal.SIGKILL)
                p.wait(10)
    from benchmarks.harness.record import make_record, write_record

    cmd = " ".join(["PYTHONPATH=. python benchmarks/reliability.py", *sys.argv[1:]])
    write_record(make_record("reliability", cmd, results), args.out)
    print(f"wrote {args.out} (logs in {LOGS})")


if __name__ == "__main__":
    main()
