"""Where a closed loop's time between two batches goes, seen from the policy worker (benchmarks only).

`install()` wraps three `StreamConsumer` methods of the worker process it runs in: every read
(when, how long, the Redis entry ids = server time of each request's XADD), every inference
(start, end, and the backend's own split of it from `last_call`) and every reply write. `summarise`
turns the events of a time window into per-cycle medians: from the end of one batch's inference to
the first and the last group of replies written, to the first and the last request of the next
batch arriving in Redis, to the last of them read and decoded, to the next inference starting; and
the full garbage collections (generation 2) in the window, with their pauses. Given the
simulators' own timestamps, it adds their side: when the first and last saw their replies, how long
their steps took, and when the first and last asked again.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

EVENTS: list[tuple] = []


def install(backend: Any = None) -> None:
    import broker.consumer as bc

    cls = bc.StreamConsumer
    accept, run, write, execute = cls._accept_all, cls._run_infer, cls._write_replies, cls._execute_replies

    async def accept_all(self: Any, got: list, deliveries: Any) -> None:
        t = time.time()
        ids = [int(e[0].split(b"-")[0]) for _, es in got for e in es]
        await accept(self, got, deliveries)
        EVENTS.append(("read", t, time.time(), ids))

    async def run_infer(self: Any, loop: Any, batch: list) -> Any:
        t = time.time()
        out = await run(self, loop, batch)
        split = dict(getattr(backend, "last_call", {}) or {})
        EVENTS.append(("infer", t, time.time(), len(batch), {k: v for k, v in split.items() if k.endswith("_ms")}))
        return out

    async def write_replies(self: Any, replies: list) -> None:
        t = time.time()
        await write(self, replies)
        EVENTS.append(("write", t, time.time(), len(replies)))

    async def execute_replies(self: Any, pipe: Any, n: int) -> None:  # the pipeline sent to Redis and answered
        t = time.time()
        await execute(self, pipe, n)
        EVENTS.append(("exec", t, time.time(), n))

    cls._accept_all, cls._run_infer, cls._write_replies = accept_all, run_infer, write_replies
    cls._execute_replies = execute_replies

    import gc

    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:  # full (generation 2) collections: pauses of the whole worker
        if info.get("generation") != 2:
            return
        if phase == "start":
            started.append(time.time())
        elif started:
            EVENTS.append(("gc", started.pop(), time.time(), 2))

    gc.callbacks.append(on_gc)


def dump(path: str) -> None:
    with open(path, "w") as f:
        json.dump(EVENTS, f)


def summarise(events: list, t0: float, t1: float, sims: list | None = None) -> dict[str, Any]:
    """Per-cycle medians (see the module docstring). `sims`, where given, are the simulators'
    own (asked, answered, stepped[, sent]) wall-clock times per call: they add when the simulators
    saw the replies, how long their steps took, when they asked again and when that request's
    pipeline left for Redis."""
    infers = [e for e in events if e[0] == "infer" and t0 <= e[1] <= t1]
    writes = [e for e in events if e[0] == "write"]
    reads = [e for e in events if e[0] == "read"]
    rows = []
    for a, b in zip(infers, infers[1:], strict=False):
        end, nxt = a[2], b[1]
        ws = [x for x in writes if end - 0.001 <= x[1] < nxt]  # a batch's replies go out in groups
        xs = [x for x in events if x[0] == "exec" and end - 0.001 <= x[1] < nxt]
        rs = [x for x in reads if end < x[1] < nxt]
        ids = sorted(i / 1000 for x in rs for i in x[3])
        if not ws or not ids:
            continue
        row = {
            "gap_ms": nxt - end,
            "first_replies_written_ms": min(x[2] for x in ws) - end,
            "first_reply_task_started_ms": min(x[1] for x in ws) - end,
            "first_pipeline_sent_ms": min(x[1] for x in xs) - end if xs else float("nan"),
            "replies_written_ms": max(x[2] for x in ws) - end,
            "first_request_in_redis_ms": ids[0] - end,
            "last_request_in_redis_ms": ids[-1] - end,
            "first_read_returned_ms": min(x[1] for x in rs) - end,
            "last_read_returned_ms": max(x[1] for x in rs) - end,
            "last_request_decoded_ms": max(x[2] for x in rs) - end,
            "reads": len(rs),
            "read_and_decode_busy_ms": sum(x[2] - x[1] for x in rs),
        }
        if sims:
            got = [m for m in sims if end <= m[1] < nxt]
            asked = sorted(m[0] - end for m in sims if end <= m[0] < nxt)
            if not got or not asked:
                continue
            seen = sorted(m[1] - end for m in got)
            row.update({
                "sim_first_reply_seen_ms": seen[0],
                "sim_last_reply_seen_ms": seen[-1],
                "sim_steps_ms": statistics.median(m[2] - m[1] for m in got),
                "sim_first_asked_ms": asked[0],
                "sim_last_asked_ms": asked[-1],
            })
            sent = sorted(m[3] - end for m in sims if len(m) > 3 and end <= m[3] < nxt)
            if sent:
                row.update({"sim_first_sent_ms": sent[0], "sim_last_sent_ms": sent[-1]})
        rows.append(row)
    out: dict[str, Any] = {"cycles": len(rows)}
    for k in (rows[0] if rows else {}):
        scale = 1 if k == "reads" else 1000
        out[k] = round(statistics.median(r[k] for r in rows) * scale, 2)
    splits = [e[4] for e in infers if e[4]]
    for k in (splits[0] if splits else {}):
        out[f"infer_{k}"] = round(statistics.median(s.get(k, 0.0) for s in splits), 2)
    out["infer_ms"] = round(statistics.median((e[2] - e[1]) * 1000 for e in infers), 2) if infers else None
    gcs = [e for e in events if e[0] == "gc" and t0 <= e[1] <= t1]
    out["full_gc_collections"] = len(gcs)
    out["full_gc_ms"] = [round((e[2] - e[1]) * 1000, 1) for e in gcs]
    return out
