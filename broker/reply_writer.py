"""The reply writer: answers onto the wire, then the requests acked and deleted.

One pipeline per group of answers: `XADD` each reply to its rollout's stream (capped, with an
`EXPIRE` when the stream's TTL is due a refresh), `XADD` what must be dead-lettered (capped), then
`XACK` + `XDEL` of the requests. A request is acked only after its reply is written
(at-least-once). redis-py empties a pipeline whose execution failed, so every retry builds it anew.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import ResponseError
from rolloutq.broker.connection import REDIS_DOWN
from rolloutq.broker.jobs import Answer
from rolloutq.broker.keys import GROUP, Keys
from rolloutq.broker.settings import WorkerSettings

log = logging.getLogger("rolloutq.consumer")


class ReplyWriter:
    """Writes answers and acks their requests; `written(ids)` is told which entries are done."""

    def __init__(self, redis: aredis.Redis, keys: Keys, settings: WorkerSettings, shards: dict[str, int],
                 clock: Callable[[], float], written: Callable[[list[bytes]], None],
                 stopping: Callable[[], bool]) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.shards = shards
        self.clock = clock
        self.written = written
        self.stopping = stopping
        self._expired_at: dict[str, float] = {}

    async def write(self, answers: list[Answer]) -> None:
        s = self.settings
        acks: dict[str, list[bytes]] = {}
        for a in answers:
            acks.setdefault(a.stream, []).append(a.entry_id)
        expire = {a.reply_to for a in answers if a.reply_to is not None and self._needs_expire(a.reply_to)}

        def pipeline() -> Any:
            pipe = self.redis.pipeline(transaction=False)
            for a in answers:
                if a.reply_to is not None:
                    pipe.xadd(a.reply_to, a.reply.to_fields(), maxlen=s.reply_maxlen, approximate=True)
                    if a.reply_to in expire:
                        pipe.expire(a.reply_to, s.reply_ttl_s)
                if a.dead_letter:
                    pipe.xadd(self.keys.dead_letters(s.policy, self.shards[a.stream]), {
                        "request_id": a.entry_id, "stream": a.stream, "reason": str(a.reply.status),
                        "error": a.reply.error[:500], "worker": s.worker_id}, maxlen=s.dlq_maxlen, approximate=True)
            for stream, ids in acks.items():
                pipe.xack(stream, GROUP, *ids)
                # Answered requests leave the stream (it is the backlog, not a log): only acked entries are
                # ever deleted, so nothing unanswered is trimmed however long the backlog grows.
                pipe.xdel(stream, *ids)
            return pipe

        try:
            await self._execute(pipeline, len(answers))
        finally:
            self.written([i for ids in acks.values() for i in ids])

    def _needs_expire(self, reply_to: str) -> bool:
        """Whether a reply stream's TTL is due a refresh: at most every half TTL per stream.

        A stream this worker writes to keeps at least half its TTL left, so it never expires while
        in use, and an EXPIRE per reply (a third of the worker's Redis commands) is saved.
        """
        now = self.clock()
        last = self._expired_at.get(reply_to)
        if last is not None and now - last < self.settings.reply_ttl_s / 2:
            return False
        self._expired_at[reply_to] = now
        if len(self._expired_at) > 65536:
            horizon = now - self.settings.reply_ttl_s / 2
            self._expired_at = {k: t for k, t in self._expired_at.items() if t >= horizon}
        return True

    async def _execute(self, pipeline: Callable[[], Any], n: int) -> None:
        delay = 0.05
        while True:
            try:
                await pipeline().execute()
                return
            except ResponseError as e:
                # e.g. NOGROUP after a Redis restart without persistence: the replies (earlier in the
                # pipeline) were written; the requests, if they still exist, will be read again.
                log.warning("worker %s: ack failed after writing %d replies: %s", self.settings.worker_id, n, e)
                return
            except REDIS_DOWN as e:
                # Replies are idempotent (the client takes one reply per nonce): resending them is safe.
                if self.stopping() and delay > 1.0:
                    log.warning("worker %s: dropping %d replies, Redis down at shutdown (%s); the requests stay "
                                "pending and will be re-claimed", self.settings.worker_id, n, e)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
