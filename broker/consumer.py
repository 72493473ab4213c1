"""The policy worker's side of the wire: read requests, micro-batch them, reply, ack.

One `StreamConsumer` per worker process (or Ray Serve replica). It composes the worker's parts,
which share one event loop:

- the reader XREADGROUPs new requests (never holding more than `max_inflight`, so the rest of a
  backlog stays in Redis for other replicas) and hands each entry to `Admission` (a `Job` for the
  batcher, or a refusal answered at once); a resend is dropped when its original is still queued,
  held or answered;
- the dispatcher takes ready batches from the cohort batcher to the `BatchRunner` (inference on
  its own thread, poison isolation, encoding), whose answers the `ReplyWriter` puts on the wire
  and acks (a request is acked only after its reply is written);
- the `Reclaimer` takes up what this worker read but lost track of, re-claims what dead workers
  held, and removes dead consumers;
- the stats task publishes a JSON snapshot to the worker-stats hash for `rolloutq top`, the
  exporter and the controller.

Cross-cutting parts (deadlines, accounting) are `rolloutq.broker.middleware` hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from rolloutq.broker.admission import Admission
from rolloutq.broker.batch_runner import BatchRunner
from rolloutq.broker.batcher import CohortBatcher, signature
from rolloutq.broker.codec import Codec, MsgpackNumpyCodec
from rolloutq.broker.connection import REDIS_DOWN
from rolloutq.broker.frames import FrameReader
from rolloutq.broker.handler import BatchHandler
from rolloutq.broker.jobs import Answer, Job
from rolloutq.broker.keys import GROUP, Keys
from rolloutq.broker.middleware import Accounting, Deadlines, Middleware
from rolloutq.broker.reclaimer import Reclaimer
from rolloutq.broker.reply_writer import ReplyWriter
from rolloutq.broker.schema import Status, peek_reply_fields
from rolloutq.broker.settings import WorkerSettings
from rolloutq.broker.worker_stats import ConsumerMetrics, NoMetrics, WorkerStats, default_worker_id

__all__ = ["BatchHandler", "ConsumerMetrics", "Job", "StreamConsumer", "WorkerStats", "default_worker_id"]

log = logging.getLogger("rolloutq.consumer")

Entries = list[tuple[str, list[tuple[bytes, dict]]]]
"""Stream entries by stream name, as a read or a claim returns them."""


class StreamConsumer:
    """A policy worker's serving loop over its policy's request streams."""

    def __init__(
        self,
        redis_client: aredis.Redis,
        handler: BatchHandler,
        settings: WorkerSettings,
        keys: Keys | None = None,
        codec: Codec | None = None,
        metrics: ConsumerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        middleware: list[Middleware] | None = None,
    ) -> None:
        self.worker_id = settings.worker_id or default_worker_id()
        self.settings = settings = replace(settings, worker_id=self.worker_id)
        self.redis = redis_client
        self.handler = handler
        self.keys = keys or Keys()
        frames = FrameReader(settings.frames_dir) if settings.shared_frames else None
        self.codec = codec or MsgpackNumpyCodec(frames=frames)
        self.clock = clock
        self.stats = WorkerStats(self.worker_id)
        b = settings.batch
        self.max_inflight = b.max_inflight or 2 * b.max_batch_size
        self.batcher: CohortBatcher[Job] = CohortBatcher(b.max_batch_size, b.max_wait_ms / 1000)
        self.streams = [self.keys.requests(settings.policy, s) for s in range(settings.shards)]
        shards = {s: i for i, s in enumerate(self.streams)}
        self.admission = Admission(handler, self.codec, self.keys, settings, shards, b.max_batch_size)
        self.middleware = [Deadlines(self.server_ms, self.worker_id),
                           Accounting(self.stats, metrics or NoMetrics()), *(middleware or [])]
        self.runner = BatchRunner(handler, self.codec, settings, self.middleware, self.server_ms)
        self.writer = ReplyWriter(redis_client, self.keys, settings, shards, clock, self._written,
                                  lambda: self.stopping)
        self.reclaimer = Reclaimer(self) if redis_client is not None else None
        self.held: dict[bytes, str] = {}
        """Entries read and not yet answered -> their request's nonce ("" until admitted)."""
        # Held from a read's (or claim's) call to Redis until its entries are marked held, so a look
        # at this consumer's pending list never sees entries that a read in flight delivered.
        self.intake = asyncio.Lock()
        self.quarantine = False
        """Set by the re-claimer while it serves a request on its last delivery: the reader pauses."""
        self.dispatching = False
        self.stopping = False
        self.ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._in_inference = 0
        self._writers: set[asyncio.Task] = set()
        self._offset_ms = 0.0
        self._recover = True  # read this consumer's own pending entries before new ones
        self._feeders_done = 0

    # -- lifecycle ------------------------------------------------------------------------
    async def setup(self) -> None:
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        sec, usec = await self.redis.time()
        self._offset_ms = sec * 1000 + usec / 1000 - time.time() * 1000

    async def run(self, stop: asyncio.Event, grace_s: float = 10.0) -> None:
        """Serve until `stop` is set; then stop reading, finish what was read (within `grace_s`)."""
        await self.retrying(self.setup, stop)
        self.ready.set()
        tasks = [
            asyncio.create_task(self._feed(self._read_loop(stop)), name="reader"),
            asyncio.create_task(self._dispatcher(), name="dispatcher"),
            asyncio.create_task(self._feed(self.reclaimer.run(stop)), name="claimer"),  # type: ignore[union-attr]
            asyncio.create_task(self._stats_publisher(stop), name="stats"),
        ]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopper and t.exception() is not None]
        self.stopping = True
        self._wake.set()
        self._room.set()
        try:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), grace_s)
            if self._writers:
                await asyncio.wait_for(asyncio.gather(*self._writers, return_exceptions=True), grace_s)
        except TimeoutError:
            log.warning("worker %s: shutdown grace of %.0fs ran out; unanswered requests stay pending "
                        "and will be re-claimed by another worker", self.worker_id, grace_s)
            for t in tasks:
                t.cancel()
        finally:
            stopper.cancel()
            self.runner.close()
            with contextlib.suppress(Exception):
                await self.redis.hdel(self.keys.worker_stats(self.settings.policy), self.worker_id)
        if failed:
            raise failed[0].exception()  # type: ignore[misc]

    async def retrying(self, op: Callable[[], Any], stop: asyncio.Event | None = None) -> Any:
        """Run a Redis operation until it succeeds, waiting out a Redis restart; once stopping (or
        `stop` is set) the Redis error is raised instead, so a stop never waits for Redis."""
        delay = 0.05
        while True:
            try:
                return await _unless_stopped(op(), stop)
            except REDIS_DOWN as e:
                if self.stopping or (stop is not None and stop.is_set()):
                    raise
                log.warning("worker %s: Redis unreachable (%s); retrying in %.2fs", self.worker_id, e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for((stop or asyncio.Event()).wait(), delay)
                delay = min(delay * 2, 2.0)

    def server_ms(self) -> float:
        """Redis's clock, in ms (requests' deadlines count on it)."""
        return time.time() * 1000 + self._offset_ms

    async def _feed(self, work: Any) -> None:
        """Run a task that feeds the batcher; the dispatcher exits only after every feeder is done."""
        try:
            await work
        finally:
            self._feeders_done += 1
            self._wake.set()

    # -- what this worker holds -------------------------------------------------------------
    def held_count(self) -> int:
        return len(self.batcher) + self._in_inference

    def hold(self, got: Any) -> Entries:
        """Mark the entries of a read or claim held (so no other path takes them up) and return
        those that were not held already, by stream name."""
        mine: Entries = []
        for stream_name, entries in got or []:
            fresh = [(i, f) for i, f in entries if f is not None and i not in self.held]
            self.held.update((i, "") for i, _ in fresh)
            if fresh:
                mine.append((stream_name.decode() if isinstance(stream_name, bytes) else stream_name, fresh))
        return mine

    def _written(self, ids: list[bytes]) -> None:
        for i in ids:
            self.held.pop(i, None)

    def resume_reading(self) -> None:
        self.quarantine = False
        self._room.set()

    async def until_idle(self) -> None:
        """Wait until nothing read by this worker is unanswered (batcher, inference, reply writes)."""
        while (self.held_count() or self._writers) and not self.stopping:
            await asyncio.sleep(0.005)

    # -- reading ---------------------------------------------------------------------------
    async def _read_loop(self, stop: asyncio.Event) -> None:
        streams = {s: ">" for s in self.streams}
        delay = 0.05
        while not stop.is_set():
            room = 0 if self.quarantine else self.max_inflight - self.held_count()
            if room <= 0:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._room.wait()
                continue
            try:
                if self._recover:
                    self._recover = False
                    await self.reclaimer.recover_own()  # type: ignore[union-attr]
                async with self.intake:
                    got = self.hold(await self.redis.xreadgroup(GROUP, self.worker_id, streams, count=room,
                                                                block=self.settings.block_ms))
                delay = 0.05
            except REDIS_DOWN as e:
                # A read whose answer was lost (timeout, dropped connection) may still have delivered
                # entries to this consumer: they are read back from its pending list first.
                self._recover = True
                log.warning("worker %s: Redis unreachable while reading (%s); retrying", self.worker_id, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            except ResponseError as e:
                if "NOGROUP" in str(e):  # Redis restarted without persistence: recreate the group
                    await self.retrying(self.setup)
                    continue
                raise
            if got:
                await self.accept(got, deliveries=1)
                await asyncio.sleep(0)  # the dispatcher starts the batch before the next read goes out

    async def accept(self, mine: Entries, deliveries: int | dict[bytes, int]) -> None:
        """Admit held entries (from `hold`): each is batched, dropped as a duplicate, or answered."""
        refused: list[Answer] = []
        dropped: list[tuple[str, bytes]] = []
        for stream, entries in mine:
            for entry_id, fields in entries:
                n = deliveries if isinstance(deliveries, int) else deliveries.get(entry_id, 1)
                if fields.get(b"resend", b"0") != b"0" and await self._answered_elsewhere(stream, fields):
                    dropped.append((stream, entry_id))
                    continue
                self.stats.requests_total += 1
                try:
                    outcome = self.admission.admit(stream, entry_id, fields, n, self.server_ms())
                except Exception as e:  # a bug in admission must not kill the reader
                    log.error("worker %s: refusing request %s: %s", self.worker_id, entry_id.decode(), e)
                    outcome = self.admission.refusal(stream, entry_id, fields, Status.BAD_REQUEST, "request could "
                                                     "not be read; it was moved to the dead-letter stream")
                if isinstance(outcome, Answer):
                    refused.append(outcome)
                    continue
                self.held[entry_id] = outcome.request.nonce
                if outcome.request.ended:
                    self.batcher.retire(outcome.request.ended)
                # A request on its last allowed delivery runs in a batch of its own (Reclaimer.claim_once), so
                # if it crashes the process it cannot push innocent batch-mates past max_deliveries with it.
                key = signature(outcome.obs) if n < self.settings.max_deliveries else ("last-chance", entry_id)
                self.batcher.add(outcome, key, self.clock(), rollout=outcome.request.rollout, rows=outcome.rows)
        if dropped:
            await self._drop(dropped)
        if refused:
            for a in refused:
                for m in self.middleware:
                    m.after_answer(a)
            await self.writer.write(refused)
        self._wake.set()

    async def _answered_elsewhere(self, stream: str, fields: dict) -> bool:
        """Whether a resend's request is already held or answered, so it must not be inferred again:
        its original entry is still in the stream (queued, or held by a worker: answered entries are
        deleted), or this worker holds its nonce, or the rollout's reply stream has its answer."""
        rollout, _, nonce = peek_reply_fields(fields)
        if rollout is None or not nonce:
            return False  # refused with an answer by admission
        if nonce in self.held.values():
            return True
        replies = self.keys.replies(self.settings.policy, rollout, self.admission.shards[stream])
        orig = fields.get(b"orig", b"")
        try:
            pipe = self.redis.pipeline(transaction=False)
            if orig and len(orig) <= 48:
                pipe.xrange(stream, min=orig, max=orig, count=1)
            pipe.xrevrange(replies, count=self.settings.reply_maxlen)
            got = await pipe.execute()
        except ResponseError:  # a malformed `orig`: judge by the reply stream alone
            got = [await self.redis.xrevrange(replies, count=self.settings.reply_maxlen)]
        if len(got) == 2 and got[0]:
            return True
        want = nonce.encode()
        return any(f.get(b"nonce") == want for _, f in got[-1])

    async def _drop(self, entries: list[tuple[str, bytes]]) -> None:
        """Ack and delete duplicate requests without a reply (the original's reply answers them)."""
        self.stats.duplicates_total += len(entries)
        for _, entry_id in entries:
            self.held.pop(entry_id, None)
        pipe = self.redis.pipeline(transaction=False)
        for stream, entry_id in entries:
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)
        with contextlib.suppress(*REDIS_DOWN, ResponseError):
            await pipe.execute()

    # -- batching and inference -------------------------------------------------------------
    async def _dispatcher(self) -> None:
        self.dispatching = True
        while True:
            batch = self.batcher.pop_ready(self.clock(), flush=self.stopping)
            if batch is None:
                # Exit only once the reader and the claimer are done: an XREADGROUP in flight when the
                # stop came still returns entries, and they must be answered, not left pending.
                if self.stopping and not len(self.batcher) and self._feeders_done >= 2:
                    return
                deadline = self.batcher.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self.clock())
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for: no extra task, so the wake-up costs one loop pass
                    async with asyncio.timeout(timeout if timeout is not None else 0.5):
                        await self._wake.wait()
                continue
            jobs, _ = batch
            self._in_inference = len(jobs)
            started = self.clock()
            try:
                await self.runner.run(jobs, self._send)
            finally:
                now = self.clock()
                self.batcher.batch_done([j.request.rollout for j in jobs], now, busy_s=now - started)
                self._in_inference = 0
                self._room.set()

    def _send(self, answers: list[Answer]) -> None:
        task = asyncio.create_task(self.writer.write(answers))
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    # -- stats --------------------------------------------------------------------------------
    async def _stats_publisher(self, stop: asyncio.Event) -> None:
        key = self.keys.worker_stats(self.settings.policy)
        while not stop.is_set():
            with contextlib.suppress(*REDIS_DOWN):
                await self.redis.hset(key, self.worker_id, json.dumps(self.stats.snapshot()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.stats_every_s)


async def _unless_stopped(work: Any, stop: asyncio.Event | None) -> Any:
    """Await `work`, or give it up when `stop` is set first (redis-py's own reconnect attempts can
    take seconds while Redis is down): then a `ConnectionError` says so."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, *REDIS_DOWN):
        await task
    raise RedisConnectionError("stopped while waiting for Redis")
