"""The re-claimer: nothing read is ever left unanswered, and dead workers leave nothing behind.

Every `claim_every_s` a worker
- takes up entries pending with itself that it does not hold (`recover_own`: a read whose answer
  was lost, e.g. a socket timeout after the process was frozen, still delivered its entries);
- re-claims entries idle longer than `claim_idle_ms` in the group's pending list (`claim_once`:
  a worker died holding them), with the last allowed delivery of a request served in quarantine;
- removes consumers that hold nothing and have not read for `forget_after_s`, and stale worker
  stats records (`forget_dead`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

from redis.exceptions import ResponseError
from rolloutq.broker.connection import REDIS_DOWN
from rolloutq.broker.keys import GROUP

if TYPE_CHECKING:
    from rolloutq.broker.consumer import StreamConsumer

log = logging.getLogger("rolloutq.consumer")

_FORGET_CONSUMER = """
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] == ARGV[2] then
    if tonumber(f['pending']) == 0 and tonumber(f['idle']) > tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
"""
"""Delete one consumer only if it still holds nothing and is still idle (atomic: a consumer that
read entries between the look and the delete would lose them from the pending list)."""


class Reclaimer:
    """The worker's periodic sweep over the group's pending list and its consumers."""

    def __init__(self, worker: StreamConsumer) -> None:
        self.w = worker
        self.settings = worker.settings
        self.redis = worker.redis
        self._forget_consumer = worker.redis.register_script(_FORGET_CONSUMER)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.claim_every_s)
            if stop.is_set():
                return
            try:
                await self.recover_own()
                await self.claim_once()
                await self.forget_dead()
            except REDIS_DOWN:
                continue
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise

    async def recover_own(self) -> int:
        """Take up entries pending with this consumer that it does not hold. Returns how many."""
        w = self.w
        taken = 0
        for stream in w.streams:
            async with w.intake:
                pending = await self.redis.xpending_range(stream, GROUP, min="-", max="+",
                                                          count=4 * w.max_inflight, consumername=w.worker_id)
                lost = {p["message_id"]: p["times_delivered"] for p in pending if p["message_id"] not in w.held}
                if not lost:
                    continue
                got = await self.redis.xclaim(stream, GROUP, w.worker_id, 0, list(lost))
                mine = w.hold([(stream, got)])
            gone = [e[0] for e in got if e[1] is None]
            if gone:
                await self.redis.xack(stream, GROUP, *gone)
            if mine:
                n = len(mine[0][1])
                taken += n
                w.stats.recovered_total += n
                log.info("worker %s: took up %d request(s) it had read but not answered", w.worker_id, n)
                await w.accept(mine, {i: lost.get(i, 1) + 1 for i, _ in mine[0][1]})
        return taken

    async def claim_once(self) -> int:
        """Take over requests idle longer than `claim_idle_ms` in the group's pending list.

        Entries that will still be under `max_deliveries` after this claim are claimed in bulk and
        batched as usual (a worker that died of something else: fast recovery). An entry about to
        get its last allowed delivery is served in quarantine: the worker stops reading, lets what
        it holds be answered, then claims that one entry and serves it alone, holding nothing else.
        So a request that crashes every worker it reaches reaches the backend exactly
        `max_deliveries` times, and an innocent request held with it by a dying worker can never be
        pushed past the limit: whenever it is on its last delivery, it runs alone.
        """
        w = self.w
        claimed = 0
        idle = self.settings.claim_idle_ms
        last = self.settings.max_deliveries
        try:
            for stream in w.streams:
                for _ in range(w.max_inflight + 8):  # bounded: a pass never spins
                    if w.stopping:
                        break
                    # A busy worker has no room; recovery may overshoot max_inflight by one batch.
                    room = max(w.max_inflight - w.held_count(), self.settings.batch.max_batch_size)
                    stale = await self.redis.xpending_range(stream, GROUP, min="-", max="+", count=room, idle=idle)
                    stale = [p for p in stale if p["message_id"] not in w.held]
                    if not stale:
                        break
                    bulk = [p["message_id"] for p in stale if p["times_delivered"] + 1 != last]  # > last: DLQ, no infer
                    if bulk:
                        ids = bulk[:room]
                    elif w.dispatching:
                        w.quarantine = True
                        await w.until_idle()
                        ids = [stale[0]["message_id"]]
                    else:
                        ids = [p["message_id"] for p in stale[:room]]
                    before = {p["message_id"]: p["times_delivered"] for p in stale}
                    async with w.intake:
                        got = await self.redis.xclaim(stream, GROUP, w.worker_id, idle, ids)
                        mine = w.hold([(stream, got)])
                    gone = [e[0] for e in got if e[1] is None]
                    if gone:  # deleted while pending (Redis < 7 keeps them listed): nothing left to answer
                        await self.redis.xack(stream, GROUP, *gone)
                    entries = [e for e in got if e[1] is not None]
                    if entries:
                        counts = {e[0]: before.get(e[0], 0) + 1 for e in entries}
                        claimed += len(entries)
                        w.stats.reclaimed_total += len(entries)
                        log.info("worker %s: re-claimed %d stale request(s) from %s (deliveries %s)", w.worker_id,
                                 len(entries), stream, sorted(set(counts.values())))
                        await w.accept(mine, counts)
                    elif not gone:
                        break  # another worker claimed them first
                    if w.quarantine:
                        await w.until_idle()
                        w.resume_reading()
        finally:  # never leave the reader paused (e.g. Redis went down mid-quarantine)
            w.resume_reading()
        return claimed

    async def forget_dead(self) -> int:
        """Remove consumers that hold nothing and have not read for `forget_after_s` (workers that
        died; a live one that is merely idle is re-added by its next read), and worker stats records
        not refreshed for as long. Returns the consumers removed."""
        w = self.w
        horizon_ms = int(self.settings.forget_after_s * 1000)
        removed = 0
        for stream in w.streams:
            for c in await self.redis.xinfo_consumers(stream, GROUP):
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                if name != w.worker_id and int(c["pending"]) == 0 and int(c["idle"]) > horizon_ms:
                    removed += int(await self._forget_consumer(keys=[stream], args=[GROUP, name, horizon_ms]))
        key = w.keys.worker_stats(self.settings.policy)
        now = w.server_ms() / 1000
        stale = []
        for worker, raw in (await self.redis.hgetall(key)).items():
            try:
                ts = float(json.loads(raw)["ts"])
            except (ValueError, KeyError, TypeError):
                ts = 0.0
            if now - ts > self.settings.forget_after_s and worker.decode(errors="replace") != w.worker_id:
                stale.append(worker)
        if stale:
            await self.redis.hdel(key, *stale)
        w.stats.consumers_forgotten_total += removed
        return removed
