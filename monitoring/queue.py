"""Queue state read straight from Redis: what the exporter publishes and `rolloutq top` shows.

One `QueueProbe.poll()` reads, for every policy in `{ns}:policies` and every shard of it:
stream length, consumer-group lag, pending, the age of the oldest undelivered and oldest pending
entry (from the stream ids, relative to Redis `TIME`, so the exporter's clock does not matter),
dead-letter length and the stream's entries-added counter; and the worker stats hash
`{ns}:workers:{policy}` for replicas up and the service rate. Rates (λ, μ) need two polls: the
probe keeps the previous poll.

Redis 6.2 has no `lag` and no `entries-added`: the probe then counts the entries after the
group's last-delivered id (and after the previous poll's last id) with a server-side script
that pages through XRANGE, capped at `scan_cap` entries per poll. Only ids cross the wire.

XINFO's `lag` (entries-added minus the group's entries-read) is not trusted blindly: Redis 7.0
keeps entries-read in the AOF's base but the XCLAIM ... LASTID commands replayed after it move
the last-delivered id without it, so after a restart `lag` also counts every entry added since
the last AOF rewrite; undelivered entries that are deleted (a client that cancels) stay in it
too. Workers delete every entry they answer, so the stream holds only unanswered entries and the
lag can never exceed `length - pending`; a larger (or missing) `lag` is replaced by the count of
entries after the last-delivered id (`lag_source` "recount", or "scan" when XINFO had none).

Worker stats JSON (one field per worker id in `{ns}:workers:{policy}`, rewritten every second or
so by each live worker): `served_total` (rows answered: a request of R rows counts R),
`batches_total`, `busy_s_total` (seconds spent in inference), `ts` (unix seconds of the write);
optional `errors_total` (an int or a map of error code -> count). Other fields are ignored.
Records older than `stale_after_s` (`rolloutq.monitoring.worker_records`) are listed as stale and never
counted in `replicas_up` or μ.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoPermissionError
from rolloutq.broker.keys import GROUP, Keys
from rolloutq.monitoring.worker_records import STALE_AFTER_S, read_records

# Count entries strictly after ARGV[1] (an id), ARGV[2] at most, paging by ARGV[3].
_COUNT_AFTER = """
local n, cur, cap, page = 0, '(' .. ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
while n < cap do
  local r = redis.call('XRANGE', KEYS[1], cur, '+', 'COUNT', page)
  n = n + #r
  if #r < page then break end
  cur = '(' .. r[#r][1]
end
return n
"""

# Id of the first entry strictly after ARGV[1], or false.
_NEXT_ID = """
local r = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', 1)
if #r == 0 then return false end
return r[1][1]
"""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _norm(d: dict[Any, Any]) -> dict[str, Any]:
    return {_s(k): v for k, v in d.items()}


def id_ms(stream_id: Any) -> int:
    """Milliseconds part of a stream id ("1700000000000-3" -> 1700000000000)."""
    return int(_s(stream_id).split("-", 1)[0])


def id_tuple(stream_id: Any) -> tuple[int, int]:
    a, _, b = _s(stream_id).partition("-")
    return int(a), int(b or 0)


@dataclass
class StreamStats:
    """One request stream (one shard of a policy)."""

    policy: str
    shard: int
    length: int = 0
    lag: int = 0
    """Entries not yet delivered to any worker of the group."""
    pending: int = 0
    """Delivered, not acked."""
    oldest_undelivered_age_s: float | None = None
    oldest_pending_age_s: float | None = None
    dead_letters: int = 0
    entries_added: int = 0
    """Monotonic count of entries ever added (Redis 7 `entries-added`; counted on 6.2)."""
    lag_source: str = "xinfo"
    """Where `lag` came from: "xinfo"; "scan" (counted: Redis 6.2, or XINFO gave none); "recount"
    (XINFO's exceeded what the stream holds, counted instead); "bound" (`length - pending`, for a
    user refused EVALSHA on the stream); "no-group"."""
    last_id: str = "0-0"


@dataclass
class WorkerStat:
    id: str
    served_total: int
    batches_total: int
    busy_s_total: float
    errors_total: int
    age_s: float
    fresh: bool
    service_rate: float | None
    """Observations per busy second of this replica (μ): over the last poll window when it did
    work, its lifetime average otherwise."""

    @property
    def mean_batch(self) -> float | None:
        return self.served_total / self.batches_total if self.batches_total else None


@dataclass
class PolicyStats:
    policy: str
    streams: list[StreamStats] = field(default_factory=list)
    workers: list[WorkerStat] = field(default_factory=list)
    arrival_rate: float | None = None
    """λ, observations per second over the last poll window (None on the first poll)."""
    service_rate_per_replica: float | None = None
    """μ, mean over fresh replicas."""
    replicas_up: int = 0
    replicas_stale: int = 0
    utilization: float | None = None
    """ρ = λ / (replicas_up × μ); None when a term is unknown or no replica is up."""

    def total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.streams)

    def max_age(self, name: str) -> float | None:
        ages = [getattr(s, name) for s in self.streams if getattr(s, name) is not None]
        return max(ages) if ages else None


@dataclass
class Snapshot:
    time_s: float
    """Redis server time of the poll."""
    policies: list[PolicyStats]

    def policy(self, name: str) -> PolicyStats:
        for p in self.policies:
            if p.policy == name:
                return p
        raise KeyError(name)


class QueueProbe:
    """Reads queue and worker state from Redis; keeps the previous poll for rates.

    `use_xinfo_lag=None` picks by server version (>= 7 uses XINFO's lag and entries-added);
    False forces the 6.2 counting path (tests use it to check both give the same numbers).
    """

    def __init__(
        self,
        redis: Any,
        keys: Keys | None = None,
        *,
        policies: tuple[str, ...] = (),
        shards: int = 1,
        stale_after_s: float = STALE_AFTER_S,
        use_xinfo_lag: bool | None = None,
        scan_cap: int = 100_000,
    ):
        self.r = redis
        self.keys = keys or Keys()
        self.extra_policies = tuple(policies)
        self.shards = shards
        self.stale_after_s = stale_after_s
        self.use_xinfo_lag = use_xinfo_lag
        self.scan_cap = scan_cap
        self._count_after = redis.register_script(_COUNT_AFTER)
        self._next_id = redis.register_script(_NEXT_ID)
        self._prev_time: float | None = None
        self._prev_added: dict[str, int] = {}
        self._prev_last: dict[tuple[str, int], str] = {}
        self._added_62: dict[tuple[str, int], int] = {}
        self._prev_worker: dict[tuple[str, str], tuple[int, float]] = {}

    # -- discovery ------------------------------------------------------------------------
    def _modern(self) -> bool:
        if self.use_xinfo_lag is None:
            version = _s(self.r.info("server").get("redis_version", "0"))
            self.use_xinfo_lag = int(version.split(".")[0]) >= 7
        return self.use_xinfo_lag

    def policy_names(self) -> list[str]:
        names = {_s(p) for p in self.r.smembers(self.keys.policies())}
        names.update(self.extra_policies)
        return sorted(names)

    def shard_count(self, policy: str) -> int:
        """Shards of a policy: the `shards` field of its metadata hash, or `shards` inside its
        `metadata` JSON, or the probe's default."""
        meta = _norm(self.r.hgetall(self.keys.policy_meta(policy)) or {})
        n = meta.get("shards")
        if n is None and "metadata" in meta:
            try:
                n = json.loads(_s(meta["metadata"])).get("shards")
            except (ValueError, AttributeError):
                n = None
        try:
            return max(1, int(_s(n))) if n is not None else self.shards
        except ValueError:
            return self.shards

    # -- one stream -----------------------------------------------------------------------
    def _stream(self, policy: str, shard: int, now_ms: int) -> StreamStats:
        key = self.keys.requests(policy, shard)
        st = StreamStats(policy, shard)
        st.dead_letters = int(self.r.xlen(self.keys.dead_letters(policy, shard)))
        if not self.r.exists(key):
            st.entries_added = self._added_62.get((policy, shard), 0)
            return st
        info = _norm(self.r.xinfo_stream(key))
        st.length = int(info.get("length", 0))
        st.last_id = _s(info.get("last-generated-id", "0-0"))
        group = None
        for g in self.r.xinfo_groups(key):
            g = _norm(g)
            if _s(g.get("name")) == GROUP:
                group = g
        modern = self._modern()
        if modern and info.get("entries-added") is not None:
            st.entries_added = int(info["entries-added"])
        else:
            prev = self._prev_last.get((policy, shard))
            if prev is None:
                added = st.length
            elif id_tuple(st.last_id) <= id_tuple(prev):
                added = 0
            else:
                added = int(self._count_after(keys=[key], args=[prev, self.scan_cap, 100]))
            self._added_62[(policy, shard)] = self._added_62.get((policy, shard), 0) + added
            st.entries_added = self._added_62[(policy, shard)]
        self._prev_last[(policy, shard)] = st.last_id

        delivered = "0-0"
        if group is None:
            st.lag, st.pending, st.lag_source = st.length, 0, "no-group"
        else:
            delivered = _s(group.get("last-delivered-id", "0-0"))
            st.pending = int(group.get("pending", 0))
            lag = group.get("lag") if modern else None
            if lag is not None and int(lag) <= max(0, st.length - st.pending):
                st.lag, st.lag_source = int(lag), "xinfo"
            else:
                self._count_lag(key, st, delivered, "scan" if lag is None else "recount")
            if st.pending:
                summary = _norm(self.r.xpending(key, GROUP))
                if summary.get("min"):
                    st.oldest_pending_age_s = max(0.0, (now_ms - id_ms(summary["min"])) / 1000.0)
        if st.lag:
            nxt = self._next_undelivered(key, delivered)
            if nxt:
                st.oldest_undelivered_age_s = max(0.0, (now_ms - id_ms(nxt)) / 1000.0)
        return st

    def _count_lag(self, key: str, st: StreamStats, delivered: str, source: str) -> None:
        """Set `st.lag` to the entries after the group's last-delivered id, counted in the stream."""
        st.lag_source = source
        if st.length == 0 or id_tuple(delivered) >= id_tuple(st.last_id):
            st.lag = 0
        elif delivered == "0-0":
            st.lag = st.length
        else:
            try:
                st.lag = int(self._count_after(keys=[key], args=[delivered, self.scan_cap, 100]))
            except NoPermissionError:
                # A user refused EVALSHA on request streams (the `controller` ACL role): entries neither
                # pending nor acked bound the lag from above, exactly while workers delete what they answer.
                st.lag, st.lag_source = max(0, st.length - st.pending), "bound"

    def _next_undelivered(self, key: str, delivered: str) -> str | None:
        try:
            nxt = self._next_id(keys=[key], args=[delivered])
        except NoPermissionError:  # as in _count_lag; XRANGE brings one whole entry instead of its id
            got = self.r.xrange(key, min="(" + delivered, count=1)
            nxt = got[0][0] if got else None
        return _s(nxt) if nxt else None

    # -- workers ---------------------------------------------------------------------------
    def _workers(self, policy: str, now_s: float) -> list[WorkerStat]:
        records = read_records(self.r, self.keys.worker_stats(policy), stale_after_s=self.stale_after_s, now_s=now_s)
        out = []
        seen: dict[str, tuple[int, float]] = {}
        for rec, fresh in [(w, True) for w in records.fresh] + [(w, False) for w in records.stale]:
            d = rec.stats
            try:
                served = int(d.get("served_total", 0))
                batches = int(d.get("batches_total", 0))
                busy = float(d.get("busy_s_total", 0.0))
                errors = d.get("errors_total", 0)
                # an int, or a map of error code -> count (the core's consumer writes the latter)
                errors = sum(int(v) for v in errors.values()) if isinstance(errors, dict) else int(errors)
            except (ValueError, TypeError, AttributeError):
                continue
            prev = self._prev_worker.get((policy, rec.worker))
            rate = None
            if prev is not None and busy - prev[1] > 1e-9 and served >= prev[0]:
                rate = (served - prev[0]) / (busy - prev[1])
            elif busy > 0:
                rate = served / busy
            seen[rec.worker] = (served, busy)
            out.append(WorkerStat(rec.worker, served, batches, busy, errors, max(0.0, rec.age_s), fresh, rate))
        # forget workers whose records are gone, so the map does not grow with every worker ever seen
        self._prev_worker = {k: v for k, v in self._prev_worker.items() if k[0] != policy}
        self._prev_worker.update({(policy, wid): v for wid, v in seen.items()})
        return sorted(out, key=lambda w: w.id)

    # -- everything ------------------------------------------------------------------------
    def poll(self) -> Snapshot:
        sec, usec = self.r.time()
        now_s = sec + usec / 1e6
        now_ms = int(now_s * 1000)
        policies = []
        for policy in self.policy_names():
            ps = PolicyStats(policy)
            ps.streams = [self._stream(policy, s, now_ms) for s in range(self.shard_count(policy))]
            ps.workers = self._workers(policy, now_s)
            ps.replicas_up = sum(1 for w in ps.workers if w.fresh)
            ps.replicas_stale = len(ps.workers) - ps.replicas_up
            rates = [w.service_rate for w in ps.workers if w.fresh and w.service_rate]
            ps.service_rate_per_replica = sum(rates) / len(rates) if rates else None
            added = ps.total("entries_added")
            prev = self._prev_added.get(policy)
            if prev is not None and self._prev_time is not None and now_s > self._prev_time:
                ps.arrival_rate = max(0, added - prev) / (now_s - self._prev_time)
            self._prev_added[policy] = added
            if ps.arrival_rate is not None and ps.replicas_up and ps.service_rate_per_replica:
                ps.utilization = ps.arrival_rate / (ps.replicas_up * ps.service_rate_per_replica)
            policies.append(ps)
        self._prev_time = now_s
        return Snapshot(now_s, policies)


def wait_poll(probe: QueueProbe, window_s: float) -> Snapshot:
    """Two polls `window_s` apart, so that rates are defined; returns the second."""
    probe.poll()
    time.sleep(window_s)
    return probe.poll()
