"""Which worker stats records count: only those a live worker wrote recently.

Each policy worker rewrites its field of `{ns}:workers:{policy}` (the JSON of
`rolloutq.broker.worker_stats.WorkerStats.snapshot()`, whose `ts` is the worker's unix time) every
`stats_every_s` and deletes it on a clean exit. A worker killed with SIGKILL leaves its record
behind, so a reader that counted the fields would count dead workers. Every reader that counts
replicas (the queue probe behind the exporter, `rolloutq top` and the autoscaler, and the run
summary of `rolloutq eval`) sorts the records here: a record is fresh when its `ts` is within
`stale_after_s` of Redis server `TIME`, so the reader's own clock does not matter, but the
workers' clocks must agree with the Redis host's within that bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoPermissionError
from rolloutq.broker.settings import WorkerSettings


def stale_bound(stats_every_s: float = WorkerSettings.stats_every_s) -> float:
    """Three missed writes, and never under 10 s."""
    return max(10.0, 3.0 * stats_every_s)


STALE_AFTER_S = stale_bound()
"""Default staleness bound, for workers that write every `WorkerSettings.stats_every_s`."""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class WorkerRecord:
    worker: str
    stats: dict[str, Any]
    """The worker's snapshot as written."""
    age_s: float
    """Redis `TIME` minus the record's `ts`; negative when the worker's clock is ahead."""


@dataclass
class WorkerRecords:
    """The records of one policy's stats hash, sorted by freshness."""

    now_s: float
    """Redis server time the ages are measured against."""
    fresh: list[WorkerRecord] = field(default_factory=list)
    stale: list[WorkerRecord] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    """Worker ids whose value is not a JSON object with a numeric `ts`: never counted, never deleted."""
    pruned: int = 0
    """Stale records this read deleted (only with `prune=True` and a user allowed to HDEL)."""


def sort_records(raw: Mapping[Any, Any], now_s: float, stale_after_s: float = STALE_AFTER_S) -> WorkerRecords:
    """Sort HGETALL output of a stats hash into fresh, stale and unreadable records.

    Fresh means `|now_s - ts| <= stale_after_s`: a record stamped far in the future (a skewed
    clock) would otherwise look fresh long after its worker died.
    """
    out = WorkerRecords(now_s)
    for wid, value in sorted(raw.items(), key=lambda kv: _s(kv[0])):
        wid = _s(wid)
        try:
            stats = json.loads(_s(value))
            ts = float(stats["ts"])
        except (ValueError, TypeError, KeyError):
            out.unreadable.append(wid)
            continue
        if not math.isfinite(ts):
            out.unreadable.append(wid)
            continue
        record = WorkerRecord(wid, stats, now_s - ts)
        (out.fresh if abs(record.age_s) <= stale_after_s else out.stale).append(record)
    return out


def _server_time(reply: Any) -> float:
    sec, usec = reply
    return int(sec) + int(usec) / 1e6


def read_records(redis: Any, key: str, *, stale_after_s: float = STALE_AFTER_S, now_s: float | None = None,
                 prune: bool = False) -> WorkerRecords:
    """Read and sort one stats hash (sync redis-py client).

    `now_s`: Redis server time when the caller already has it; else this reads `TIME`.
    `prune`: HDEL the stale records; a user without HDEL on the hash (the `controller` ACL role)
    just leaves them, and they are still not counted. A worker that rewrites its record between
    the read and the HDEL loses it until its next write, one stats interval later.
    """
    if now_s is None:
        now_s = _server_time(redis.time())
    records = sort_records(redis.hgetall(key) or {}, now_s, stale_after_s)
    if prune and records.stale:
        try:
            records.pruned = int(redis.hdel(key, *[w.worker for w in records.stale]))
        except NoPermissionError:
            pass
    return records


async def read_records_async(redis: Any, key: str, *, stale_after_s: float = STALE_AFTER_S,
                             now_s: float | None = None, prune: bool = False) -> WorkerRecords:
    """`read_records` for a redis.asyncio client."""
    if now_s is None:
        now_s = _server_time(await redis.time())
    records = sort_records(await redis.hgetall(key) or {}, now_s, stale_after_s)
    if prune and records.stale:
        try:
            records.pruned = int(await redis.hdel(key, *[w.worker for w in records.stale]))
        except NoPermissionError:
            pass
    return records
