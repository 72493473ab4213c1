"""The policy worker's side of the wire: read requests, micro-batch them, reply, ack.

One `StreamConsumer` per worker process (or Ray Serve replica). Its tasks share one event loop:

- the reader XREADGROUPs new requests (never holding more than `max_inflight`, so the rest of a
  backlog stays in Redis for other replicas; without blocking while rollouts are due back, where
  `poll_ms` asks for it: `broker.polling`), decodes and validates them, and feeds the batcher;
- the dispatcher takes ready batches and runs the handler's `infer` in a one-thread executor, so
  the loop keeps reading and decoding the next batch while the model runs;
- reply writers pipeline XADD + EXPIRE of every reply, then XACK: a request is acked only after
  its reply was written (at-least-once; the client takes only the reply echoing its nonce);
- the claimer re-claims (XPENDING IDLE + XCLAIM) entries left pending by dead workers, and dead-letters those delivered
  `max_deliveries` times;
- the stats task publishes a JSON snapshot to the worker-stats hash for `rolloutq top`, the
  exporter and the controller.

Bad requests never reach the handler: each gets an error reply naming the problem and is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aredis
from redis.exceptions import ResponseError

from broker.batcher import CohortBatcher, MicroBatcher, signature
from broker.codec import Codec, MsgpackNumpyCodec, first_non_finite
from broker.connection import REDIS_DOWN
from broker.errors import BrokerError, CodecError, ProtocolError, SharedFramesUnavailable
from broker.frames import FrameReader
from broker.keys import GROUP, Keys
from broker.polling import ReadPacer
from broker.schema import Reply, Request, Status, first_steps, peek_reply_fields
from broker.settings import WorkerSettings
from broker.worker_stats import ConsumerMetrics, NoMetrics, WorkerStats, default_worker_id

__all__ = ["BatchHandler", "ConsumerMetrics", "Job", "StreamConsumer", "WorkerStats", "default_worker_id"]

log = logging.getLogger("rolloutq.consumer")


class BatchHandler(Protocol):
    """What the consumer needs from a policy: a schema check and batched inference.

    A handler may also set `inline = True` when `infer` is trivial (the null backend): it then runs
    on the event loop instead of in the inference thread; or `stages = True` with a `stage(obs)`
    method: each request is then staged on the inference thread as it arrives (the requests of
    one read handed over together), and `infer` gets the staged items (preparation overlaps the
    wait for the rest of the batch); or a `rows(obs)` method when a request may carry several rows
    (a vectorized simulator's envs): batches then count rows. Without it every request is one row.
    """

    def validate(self, obs: Any) -> str | None:
        """None if `obs` fits the policy's schema, else a message for the client."""

    def infer(self, batch: list[Any]) -> list[Any]:
        """One action chunk per observation (runs in the executor thread unless `inline`)."""


@dataclass
class Job:
    entry_id: bytes
    stream: str
    request: Request
    obs: Any
    id_ms: int
    deliveries: int
    decode_s: float
    rows: int = 1  # rollouts in the request: a vectorized simulator sends several
    staged: asyncio.Future | None = None  # the staging of the read this request came in
    staged_index: int = 0
    reply_to: str = ""  # the rollout's reply stream, derived from the request stream and the rollout id

    def reply(self, status: str, **kw: Any) -> Reply:
        return Reply(self.request.seq, status, nonce=self.request.nonce, **kw)


class StreamConsumer:
    def __init__(
        self,
        redis_client: aredis.Redis,
        handler: BatchHandler,
        settings: WorkerSettings,
        keys: Keys | None = None,
        codec: Codec | None = None,
        metrics: ConsumerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis_client
        self.handler = handler
        self.settings = settings
        self.keys = keys or Keys()
        frames = FrameReader(settings.frames_dir) if settings.shared_frames else None
        self.codec = codec or MsgpackNumpyCodec(frames=frames)
        self.metrics = metrics or NoMetrics()
        self.clock = clock
        self.worker_id = settings.worker_id or default_worker_id()
        self.stats = WorkerStats(self.worker_id)
        b = settings.batch
        self.max_inflight = b.max_inflight or 2 * b.max_batch_size
        if b.dispatch not in ("cohort", "deadline"):
            raise ValueError(f"batch dispatch {b.dispatch!r} unknown: use cohort or deadline")
        batcher_class = CohortBatcher if b.dispatch == "cohort" else MicroBatcher
        self.batcher: MicroBatcher[Job] = batcher_class(b.max_batch_size, b.max_wait_ms / 1000)
        self.streams = [self.keys.requests(settings.policy, s) for s in range(settings.shards)]
        self._shard = {s: i for i, s in enumerate(self.streams)}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rolloutq-infer")
        self._inline = bool(getattr(handler, "inline", False))
        self._stages = bool(getattr(handler, "stages", False)) and not self._inline
        self._rows: Callable[[Any], int] | None = getattr(handler, "rows", None)
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._in_inference = 0
        self._writers: set[asyncio.Task] = set()
        self._offset_ms = 0.0
        self._stopping = False
        self._dispatching = False
        self._quarantine = False
        self._held_ids: set[bytes] = set()
        self._held_nonces: dict[bytes, str] = {}  # entry id -> its request's nonce, while held
        self._recover = True  # read this consumer's own pending entries before new ones
        # Held from a read's (or claim's) call to Redis until its entries are marked held, so a
        # look at this consumer's pending list never sees entries that a read in flight delivered.
        self._intake = asyncio.Lock()
        self._forget_consumer = redis_client.register_script(_FORGET_CONSUMER) if redis_client is not None else None
        self._to_stage: list[Job] = []
        self._expired_at: dict[str, float] = {}
        self._feeders_done = 0
        self._pacer = ReadPacer(self.batcher, settings.poll_ms, settings.block_ms, clock) if settings.poll_ms > 0 \
            else None
        self.ready = asyncio.Event()

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
        await self._retrying(self.setup)
        self.ready.set()
        tasks = [
            asyncio.create_task(self._reader(stop), name="reader"),
            asyncio.create_task(self._dispatcher(stop), name="dispatcher"),
            asyncio.create_task(self._claimer(stop), name="claimer"),
            asyncio.create_task(self._stats_publisher(stop), name="stats"),
        ]
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopper and t.exception() is not None]
        self._stopping = True
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
            self._executor.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(Exception):
                await self.redis.hdel(self.keys.worker_stats(self.settings.policy), self.worker_id)
        if failed:
            raise failed[0].exception()  # type: ignore[misc]

    async def _retrying(self, op: Callable[[], Any]) -> Any:
        delay = 0.05
        while True:
            try:
                return await op()
            except REDIS_DOWN as e:
                if self._stopping:
                    raise
                log.warning("worker %s: Redis unreachable (%s); retrying in %.2fs", self.worker_id, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _server_ms(self) -> float:
        return time.time() * 1000 + self._offset_ms

    # -- reading ---------------------------------------------------------------------------
    def _held(self) -> int:
        return len(self.batcher) + self._in_inference

    async def _reader(self, stop: asyncio.Event) -> None:
        try:
            await self._read_loop(stop)
        finally:
            self._feeders_done += 1
            self._wake.set()

    async def _read_loop(self, stop: asyncio.Event) -> None:
        streams = {s: ">" for s in self.streams}
        delay = 0.05
        pacer = self._pacer
        reader = self.redis if pacer is None else self.redis.client()  # polling: its own connection, to unblock
        try:
            while not stop.is_set():
                room = 0 if self._quarantine else self.max_inflight - self._held()
                if room <= 0:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await self._room.wait()
                    continue
                block, pause = self.settings.block_ms, 0.0
                try:
                    if self._recover:
                        await self.recover_own()
                    if pacer is not None:
                        if pacer.client_id is None:
                            pacer.client_id = await reader.client_id()
                        block, pause = pacer.plan(self._in_inference > 0)
                    async with self._intake:
                        got = self._hold(await reader.xreadgroup(GROUP, self.worker_id, streams, count=room,
                                                                 block=block))
                    delay = 0.05
                except REDIS_DOWN as e:
                    # A read whose answer was lost (timeout, dropped connection) may still have delivered
                    # entries to this consumer: they are read back from its pending list first.
                    self._recover = True
                    log.warning("worker %s: Redis unreachable while reading (%s); retrying", self.worker_id, e)
                    if pacer is not None:
                        pacer.client_id = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                except ResponseError as e:
                    if "NOGROUP" in str(e):  # Redis restarted without persistence: recreate the group
                        await self._retrying(self.setup)
                        continue
                    raise
                if got:
                    if pacer is not None:
                        pacer.arrived()
                    await self._accept_all(got, deliveries=1)
                elif pause:
                    await asyncio.sleep(pause)
        finally:
            if reader is not self.redis:
                await reader.aclose()

    def _hold(self, got: list | None) -> list[tuple[str, list]]:
        """Mark the entries of a read or claim held (so no other path takes them up) and return
        those that were not held already, by stream name."""
        mine: list[tuple[str, list]] = []
        for stream_name, entries in got or []:
            fresh = [(i, f) for i, f in entries if f is not None and i not in self._held_ids]
            self._held_ids.update(i for i, _ in fresh)
            if fresh:
                mine.append((stream_name.decode() if isinstance(stream_name, bytes) else stream_name, fresh))
        return mine

    async def _accept_all(self, mine: list[tuple[str, list]], deliveries: int | dict[bytes, int]) -> None:
        """Accept the held entries `mine` (from `_hold`): queue each for batching or refuse it."""
        rejects: list[tuple[str, bytes, str | None, Reply]] = []
        dropped: list[tuple[str, bytes]] = []
        for stream, entries in mine:
            for entry_id, fields in entries:
                n = deliveries if isinstance(deliveries, int) else deliveries.get(entry_id, 1)
                if fields.get(b"resend", b"0") != b"0" and await self._answered_elsewhere(stream, fields):
                    dropped.append((stream, entry_id))
                    continue
                try:
                    bad = self._accept(stream, entry_id, fields, n)
                except Exception as e:  # a bug in decoding or validation must not kill the reader
                    log.error("worker %s: rejecting request %s: %s", self.worker_id, entry_id.decode(),
                              _safe_message(e))
                    bad = self._refusal(stream, entry_id, fields, Status.BAD_REQUEST, "request could not be read; "
                                        "it was moved to the dead-letter stream")
                if bad is not None:
                    rejects.append(bad)
        if self._to_stage:  # one hand-over to the inference thread per read, not one per request
            jobs, self._to_stage = self._to_stage, []
            staged = asyncio.get_running_loop().run_in_executor(self._executor, self._stage_all, [j.obs for j in jobs])
            for i, job in enumerate(jobs):
                job.staged, job.staged_index = staged, i
        if dropped:
            await self._drop(dropped)
        if rejects:
            await self._write_replies(rejects)
        self._wake.set()

    async def _answered_elsewhere(self, stream: str, fields: dict) -> bool:
        """Whether a resend's request is already held or answered, so it must not be inferred again:
        its original entry is still in the stream (queued, or held by a worker: answered entries are
        deleted), or this worker holds it, or the rollout's reply stream already has its answer."""
        rollout, _, nonce = peek_reply_fields(fields)
        if rollout is None or not nonce:
            return False  # refused with a reply by _accept
        if nonce in self._held_nonces.values():
            return True
        orig = fields.get(b"orig", b"")
        try:
            pipe = self.redis.pipeline(transaction=False)
            if orig and len(orig) <= 48:
                pipe.xrange(stream, min=orig, max=orig, count=1)
            pipe.xrevrange(self.keys.replies(self.settings.policy, rollout, self._shard[stream]),
                           count=self.settings.reply_maxlen)
            got = await pipe.execute()
        except ResponseError:  # a malformed `orig`: judge by the reply stream alone
            got = [await self.redis.xrevrange(self.keys.replies(self.settings.policy, rollout, self._shard[stream]),
                                              count=self.settings.reply_maxlen)]
        replies = got[-1]
        if len(got) == 2 and got[0]:
            return True
        want = nonce.encode()
        return any(f.get(b"nonce") == want for _, f in replies)

    async def _drop(self, entries: list[tuple[str, bytes]]) -> None:
        """Ack and delete duplicate requests without a reply (the original's reply answers them)."""
        self.stats.duplicates_total += len(entries)
        self._held_ids.difference_update(i for _, i in entries)
        pipe = self.redis.pipeline(transaction=False)
        for stream, entry_id in entries:
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)
        with contextlib.suppress(*REDIS_DOWN, ResponseError):
            await pipe.execute()

    def _stage_all(self, observations: list[Any]) -> list[tuple[bool, Any]]:
        """On the inference thread: stage each request (all at once where the handler has
        `stage_many`); a failure is that request's alone."""
        many = getattr(self.handler, "stage_many", None)
        if many is not None:
            try:
                return many(observations)
            except Exception as e:  # the whole hand-over failed: each of its requests says so
                return [(False, e)] * len(observations)
        out: list[tuple[bool, Any]] = []
        for obs in observations:
            try:
                out.append((True, self.handler.stage(obs)))  # type: ignore[attr-defined]
            except Exception as e:
                out.append((False, e))
        return out

    def _refusal(self, stream: str, entry_id: bytes, fields: dict, code: str, error: str):
        """The answer to a request refused before it was parsed: on the rollout's own reply stream
        when its rollout id is usable (else dead-lettered without a reply), echoing seq and nonce
        where they are readable."""
        rollout, seq, nonce = peek_reply_fields(fields)
        reply_key = None if rollout is None else self.keys.replies(self.settings.policy, rollout, self._shard[stream])
        return stream, entry_id, reply_key, Reply(seq, code, nonce=nonce, error=error, worker=self.worker_id)

    def _accept(self, stream: str, entry_id: bytes, fields: dict, deliveries: int):
        """Queue a request for batching, or return (stream, id, reply key, error reply) to refuse it."""
        self.stats.requests_total += 1
        try:
            request = Request.from_fields(fields)
        except ProtocolError as e:
            code = Status.UNSUPPORTED_VERSION if "protocol version" in str(e) else Status.BAD_REQUEST
            return self._refusal(stream, entry_id, fields, code, str(e))
        reply_to = self.keys.replies(self.settings.policy, request.rollout, self._shard[stream])
        seq, nonce = request.seq, request.nonce

        def refuse(code: str, error: str):
            return stream, entry_id, reply_to, Reply(seq, code, nonce=nonce, error=error, worker=self.worker_id)

        id_ms = int(entry_id.split(b"-")[0])
        if self._server_ms() > id_ms + request.ttl_ms:
            return refuse(Status.EXPIRED, f"deadline of {request.ttl_ms} ms passed before inference; resend with a "
                          "longer deadline or add policy workers")
        if deliveries > self.settings.max_deliveries:
            return refuse(Status.DEAD_LETTER, f"request was delivered {deliveries - 1} times without an answer "
                          "(worker crashes); it was moved to the dead-letter stream")
        t0 = time.perf_counter()
        try:
            obs = self.codec.decode(request.obs)
        except SharedFramesUnavailable as e:
            return refuse(Status.FRAMES_UNAVAILABLE, str(e))
        except CodecError as e:
            return refuse(Status.BAD_OBSERVATION, str(e))
        except Exception as e:  # the codec's own checks missed something: still the sender's bytes' fault
            log.warning("worker %s: codec raised %s on request %s", self.worker_id, _safe_message(e),
                        entry_id.decode())
            return refuse(Status.BAD_OBSERVATION, "observation bytes could not be decoded: send a msgpack map "
                          "of arrays (docs/PROTOCOL.md §5)")
        decode_s = time.perf_counter() - t0
        if self.settings.check_finite and (key := first_non_finite(obs)) is not None:
            return refuse(Status.BAD_OBSERVATION, f"observation key {key!r} holds NaN or infinity: the simulator "
                          "produced a non-finite value")
        if self.settings.validate_schema:
            try:
                problem = self.handler.validate(obs)
            except Exception as e:
                log.warning("worker %s: schema check raised %s", self.worker_id, _safe_message(e))
                problem = f"observation does not match the policy's schema ({_for_client(e)})"
            if problem:
                return refuse(Status.SCHEMA_MISMATCH, problem[:1000])
        n_rows = self._rows(obs) if self._rows is not None else 1
        if n_rows > self.batcher.max_batch_size:
            return refuse(Status.SCHEMA_MISMATCH, f"observation carries {n_rows} rows; this worker runs batches of "
                          f"at most {self.batcher.max_batch_size} rows: send at most that many per request")
        job = Job(entry_id, stream, request, obs, id_ms, deliveries, decode_s, n_rows, reply_to=reply_to)
        if self._stages:
            self._to_stage.append(job)
        # A request on its last allowed delivery runs in a batch of its own (see claim_once), so if it
        # crashes the process it cannot push innocent batch-mates past max_deliveries with it.
        key = signature(obs) if deliveries < self.settings.max_deliveries else ("last-chance", entry_id)
        self.batcher.add(job, key, self.clock(), rollout=request.rollout, rows=n_rows)
        self._held_ids.add(entry_id)
        self._held_nonces[entry_id] = nonce
        return None

    # -- batching and inference -------------------------------------------------------------
    async def _dispatcher(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self._dispatching = True
        while True:
            batch = self.batcher.pop_ready(self.clock(), flush=self._stopping)
            if batch is None:
                # Exit only once the reader and the claimer are done: an XREADGROUP in flight when the
                # stop came still returns entries, and they must be answered, not left pending.
                if self._stopping and not len(self.batcher) and self._feeders_done >= 2:
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
            try:
                await self._infer(loop, jobs)
            finally:
                self.batcher.batch_done([j.request.rollout for j in jobs], self.clock())
                self._in_inference = 0
                self._room.set()
                if self._pacer is not None and self._pacer.client_id is not None:
                    self._spawn(self._wake_reader(self._pacer.client_id))

    async def _infer(self, loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> None:
        now_ms = self._server_ms()
        live: list[Job] = []
        replies: list[tuple[str, bytes, str | None, Reply]] = []
        for job in jobs:
            if now_ms > job.id_ms + job.request.ttl_ms:
                replies.append((job.stream, job.entry_id, job.reply_to, job.reply(
                    Status.EXPIRED, error="deadline passed while queued; add policy workers or lengthen the deadline",
                    worker=self.worker_id)))
            else:
                live.append(job)
        if live and self._stages:
            live = await self._staged(live, replies)
        if live:
            queue_ms = [max(0.0, now_ms - j.id_ms) for j in live]
            t0 = time.perf_counter()
            try:
                chunks = await self._run_infer(loop, [j.obs for j in live])
                if len(chunks) != len(live):
                    raise RuntimeError(f"backend returned {len(chunks)} chunks for {len(live)} observations")
            except Exception as e:  # a bad batch must not kill the worker
                log.error("worker %s: inference failed on a batch of %d: %s", self.worker_id, len(live), e)
                replies.extend(await self._isolate(loop, live))
            else:
                infer_s = time.perf_counter() - t0
                batch_rows = sum(j.rows for j in live)
                t1, encode_s, group = time.perf_counter(), 0.0, self.settings.reply_group
                for job, chunk, q in zip(live, chunks, queue_ms, strict=True):
                    if len(replies) >= group > 0:  # send what is encoded; Redis works while the rest is
                        self._send(replies)
                        replies = []
                        encode_s += time.perf_counter() - t1
                        await asyncio.sleep(0)
                        t1 = time.perf_counter()
                    payload, problem = self._encode_chunk(chunk, job.request.steps)
                    if problem is not None:
                        replies.append((job.stream, job.entry_id, job.reply_to, job.reply(
                            Status.BAD_ACTION, error=problem, worker=self.worker_id)))
                        continue
                    replies.append((job.stream, job.entry_id, job.reply_to, job.reply(
                        Status.OK, action=payload, queue_ms=q, infer_ms=infer_s * 1000, batch=batch_rows,
                        worker=self.worker_id)))
                encode_s += time.perf_counter() - t1
                if replies:  # on the wire before the bookkeeping: the simulators wait for them
                    self._send(replies)
                    replies = []
                    await asyncio.sleep(0)
                self._account(live, queue_ms, infer_s, batch_rows)
                decode_s = sum(j.decode_s for j in live)
                self.stats.decode_s_total += decode_s
                self.stats.encode_s_total += encode_s
                self.metrics.on_batch(batch_rows, [q / 1000 for q in queue_ms], infer_s, decode_s, encode_s)
        if replies:
            self._send(replies)

    def _encode_chunk(self, chunk: Any, steps: int) -> tuple[bytes, str | None]:
        """A chunk's reply payload, or the reason it is not a valid action (the policy's fault)."""
        chunk = first_steps(chunk, steps)
        if self.settings.check_finite and (key := first_non_finite(chunk)) is not None:
            return b"", f"the policy's action {key!r} holds NaN or infinity"
        try:
            return self.codec.encode(chunk), None
        except CodecError as e:
            return b"", f"the policy's output could not be encoded: {e}"

    def _send(self, replies: list[tuple[str, bytes, str | None, Reply]]) -> None:
        self._spawn(self._write_replies(replies))

    async def _wake_reader(self, client_id: int) -> None:
        """End the polling reader's blocking read: the batch is answered, its rollouts are due back."""
        with contextlib.suppress(*REDIS_DOWN, ResponseError):
            await self.redis.client_unblock(client_id)

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._writers.add(task)
        task.add_done_callback(self._writers.discard)

    async def _staged(self, jobs: list[Job], replies: list) -> list[Job]:
        """Swap each job's observation for its staged form; a request whose staging failed is answered alone."""
        ok = []
        for job in jobs:
            try:
                staged_ok, value = (await job.staged)[job.staged_index]  # type: ignore[misc]
                if not staged_ok:
                    raise value
                job.obs = value
                ok.append(job)
            except Exception as e:
                log.warning("worker %s: staging request %s failed: %s", self.worker_id, job.entry_id.decode(),
                            _safe_message(e))
                replies.append((job.stream, job.entry_id, job.reply_to, job.reply(
                    Status.INFERENCE_FAILED, error=f"preparing the observation failed ({_for_client(e)})",
                    worker=self.worker_id)))
            job.staged = None
        return ok

    async def _run_infer(self, loop: asyncio.AbstractEventLoop, batch: list[Any]) -> list[Any]:
        if self._inline:
            return self.handler.infer(batch)
        return await loop.run_in_executor(self._executor, self.handler.infer, batch)

    async def _isolate(self, loop: asyncio.AbstractEventLoop, jobs: list[Job]) -> list:
        """After a failed batch, run its requests one by one so one poison request fails alone.

        The failed batch counts as one delivery of each of its requests, so the backend sees a request
        that always fails exactly `max_deliveries` times, like one that crashes the worker each time.
        """
        out = []
        for job in jobs:
            error = "the batch it was in failed"
            job.deliveries += 1  # the failed batch was one delivery of every request in it
            for _ in range(max(0, self.settings.max_deliveries - job.deliveries + 1)):
                t0 = time.perf_counter()
                try:
                    chunk = (await self._run_infer(loop, [job.obs]))[0]
                except Exception as e:
                    error = _for_client(e)  # the traceback stays in the log
                    log.warning("worker %s: inference failed on request %s alone: %s", self.worker_id,
                                job.entry_id.decode(), _safe_message(e))
                    job.deliveries += 1
                    continue
                infer_s = time.perf_counter() - t0
                payload, problem = self._encode_chunk(chunk, job.request.steps)
                if problem is not None:
                    out.append((job.stream, job.entry_id, job.reply_to, job.reply(
                        Status.BAD_ACTION, error=problem, worker=self.worker_id)))
                    break
                out.append((job.stream, job.entry_id, job.reply_to, job.reply(
                    Status.OK, action=payload, infer_ms=infer_s * 1000, batch=self._account([job], [0.0], infer_s),
                    worker=self.worker_id)))
                break
            else:
                out.append((job.stream, job.entry_id, job.reply_to, job.reply(
                    Status.INFERENCE_FAILED, error=f"the model raised on this observation, also alone, "
                    f"{self.settings.max_deliveries} times ({error}); it was moved to the dead-letter stream",
                    worker=self.worker_id)))
        return out

    def _account(self, jobs: list[Job], queue_ms: list[float], infer_s: float, rows: int | None = None) -> int:
        """Count a batch of `rows` rows (computed when not given) in the stats; returns its rows."""
        n = sum(j.rows for j in jobs) if rows is None else rows
        s = self.stats
        s.batches_total += 1
        s.batched_items_total += n
        s.busy_s_total += infer_s
        s.infer_ms.append(infer_s * 1000)
        s.queue_ms.extend(queue_ms)
        s.batch_sizes.append(n)
        return n

    # -- replies ------------------------------------------------------------------------------
    async def _write_replies(self, replies: list[tuple[str, bytes, str | None, Reply]]) -> None:
        """XADD every reply (and EXPIRE its stream), dead-letter what must be, then XACK and XDEL all."""
        s = self.settings
        acks: dict[str, list[bytes]] = {}
        expire = {reply_to for _, _, reply_to, _ in replies if reply_to is not None and self._needs_expire(reply_to)}
        for stream, entry_id, reply_to, reply in replies:
            acks.setdefault(stream, []).append(entry_id)
            if reply.ok:
                self.stats.replies_ok += 1
            else:
                self.stats.errors[str(reply.status)] = self.stats.errors.get(str(reply.status), 0) + 1
            if _dead_letters(reply, reply_to):
                self.stats.dead_letters_total += 1
            self.metrics.on_reply(str(reply.status))

        def pipeline() -> Any:
            # Built anew for every attempt: redis-py empties a pipeline whose execution failed.
            pipe = self.redis.pipeline(transaction=False)
            for stream, entry_id, reply_to, reply in replies:
                if reply_to is not None:
                    pipe.xadd(reply_to, reply.to_fields(), maxlen=s.reply_maxlen, approximate=True)
                    if reply_to in expire:
                        pipe.expire(reply_to, s.reply_ttl_s)
                if _dead_letters(reply, reply_to):
                    pipe.xadd(self.keys.dead_letters(s.policy, self._shard[stream]), {
                        "request_id": entry_id, "stream": stream, "reason": str(reply.status),
                        "error": reply.error[:500], "worker": self.worker_id}, maxlen=s.dlq_maxlen, approximate=True)
            for stream, ids in acks.items():
                pipe.xack(stream, GROUP, *ids)
                # Answered requests leave the stream (it is the backlog, not a log): only acked entries are
                # ever deleted, so nothing unanswered is trimmed however long the backlog grows.
                pipe.xdel(stream, *ids)
            return pipe

        try:
            await self._execute_replies(pipeline, len(replies))
        finally:
            for ids in acks.values():
                self._held_ids.difference_update(ids)
                for i in ids:
                    self._held_nonces.pop(i, None)

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

    async def _execute_replies(self, pipeline: Callable[[], Any], n: int) -> None:
        delay = 0.05
        while True:
            try:
                await pipeline().execute()
                return
            except ResponseError as e:
                # e.g. NOGROUP after a Redis restart without persistence: the replies (earlier in the
                # pipeline) were written; the requests, if they still exist, will be read again.
                log.warning("worker %s: ack failed after writing %d replies: %s", self.worker_id, n, e)
                return
            except REDIS_DOWN as e:
                # Replies are idempotent by (rollout, seq): resending the whole pipeline is safe.
                if self._stopping and delay > 1.0:
                    log.warning("worker %s: dropping %d replies, Redis down at shutdown (%s); the requests stay "
                                "pending and will be re-claimed", self.worker_id, n, e)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- re-claiming -------------------------------------------------------------------------
    async def _claimer(self, stop: asyncio.Event) -> None:
        try:
            await self._claim_loop(stop)
        finally:
            self._feeders_done += 1
            self._wake.set()

    async def _claim_loop(self, stop: asyncio.Event) -> None:
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
        claimed = 0
        idle = self.settings.claim_idle_ms
        last = self.settings.max_deliveries
        try:
            for stream in self.streams:
                for _ in range(self.max_inflight + 8):  # bounded: a pass never spins
                    if self._stopping:
                        break
                    # A busy worker has no room; recovery may overshoot max_inflight by one batch.
                    room = max(self.max_inflight - self._held(), self.settings.batch.max_batch_size)
                    stale = await self.redis.xpending_range(stream, GROUP, min="-", max="+", count=room,
                                                            idle=idle)
                    stale = [p for p in stale if p["message_id"] not in self._held_ids]
                    if not stale:
                        break
                    bulk = [p["message_id"] for p in stale if p["times_delivered"] + 1 != last]  # > last: DLQ, no infer
                    if bulk:
                        ids = bulk[:room]
                    elif self._dispatching:
                        self._quarantine = True
                        await self._until_idle()
                        ids = [stale[0]["message_id"]]
                    else:
                        ids = [p["message_id"] for p in stale[:room]]
                    before = {p["message_id"]: p["times_delivered"] for p in stale}
                    async with self._intake:
                        got = await self.redis.xclaim(stream, GROUP, self.worker_id, idle, ids)
                        mine = self._hold([(stream, got)])
                    gone = [e[0] for e in got if e[1] is None]
                    if gone:  # deleted while pending (Redis < 7 keeps them listed): nothing left to answer
                        await self.redis.xack(stream, GROUP, *gone)
                    entries = [e for e in got if e[1] is not None]
                    if entries:
                        counts = {e[0]: before.get(e[0], 0) + 1 for e in entries}
                        claimed += len(entries)
                        self.stats.reclaimed_total += len(entries)
                        log.info("worker %s: re-claimed %d stale request(s) from %s (deliveries %s)", self.worker_id,
                                 len(entries), stream, sorted(set(counts.values())))
                        await self._accept_all(mine, counts)
                    elif not gone:
                        break  # another worker claimed them first
                    if self._quarantine:
                        await self._until_idle()
                        self._quarantine = False
                        self._room.set()
        finally:  # never leave the reader paused (e.g. Redis went down mid-quarantine)
            self._quarantine = False
            self._room.set()
        return claimed

    async def recover_own(self) -> int:
        """Take up entries pending with this consumer that it does not hold: delivered by a read whose
        answer was lost (a timeout after SIGSTOP, a dropped connection). Returns how many."""
        self._recover = False
        taken = 0
        for stream in self.streams:
            async with self._intake:
                pending = await self.redis.xpending_range(stream, GROUP, min="-", max="+",
                                                          count=4 * self.max_inflight, consumername=self.worker_id)
                lost = {p["message_id"]: p["times_delivered"] for p in pending
                        if p["message_id"] not in self._held_ids}
                if not lost:
                    continue
                got = await self.redis.xclaim(stream, GROUP, self.worker_id, 0, list(lost))
                mine = self._hold([(stream, got)])
            gone = [e[0] for e in got if e[1] is None]
            if gone:
                await self.redis.xack(stream, GROUP, *gone)
            if mine:
                n = len(mine[0][1])
                taken += n
                self.stats.recovered_total += n
                log.info("worker %s: took up %d request(s) it had read but not answered", self.worker_id, n)
                await self._accept_all(mine, {i: lost.get(i, 1) + 1 for i, _ in mine[0][1]})
        return taken

    async def forget_dead(self) -> int:
        """Remove consumers of the group that hold nothing and have not read for `forget_after_s`
        (workers that died; a live one that is merely idle is re-added by its next read), and worker
        stats records not refreshed for as long. Returns the consumers removed."""
        horizon_ms = int(self.settings.forget_after_s * 1000)
        removed = 0
        for stream in self.streams:
            for c in await self.redis.xinfo_consumers(stream, GROUP):
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                if name != self.worker_id and int(c["pending"]) == 0 and int(c["idle"]) > horizon_ms:
                    # checked again inside the script: a consumer that read meanwhile keeps its entries
                    removed += int(await self._forget_consumer(keys=[stream], args=[GROUP, name, horizon_ms]))
        key = self.keys.worker_stats(self.settings.policy)
        now = self._server_ms() / 1000
        stale = []
        for worker, raw in (await self.redis.hgetall(key)).items():
            try:
                ts = float(json.loads(raw)["ts"])
            except (ValueError, KeyError, TypeError):
                ts = 0.0
            if now - ts > self.settings.forget_after_s and worker.decode(errors="replace") != self.worker_id:
                stale.append(worker)
        if stale:
            await self.redis.hdel(key, *stale)
        self.stats.consumers_forgotten_total += removed
        return removed

    async def _until_idle(self) -> None:
        """Wait until nothing read by this worker is unanswered (batcher, inference, reply writes)."""
        while (self._held() or self._writers) and not self._stopping:
            await asyncio.sleep(0.005)

    # -- stats --------------------------------------------------------------------------------
    async def _stats_publisher(self, stop: asyncio.Event) -> None:
        key = self.keys.worker_stats(self.settings.policy)
        while not stop.is_set():
            with contextlib.suppress(*REDIS_DOWN):
                await self.redis.hset(key, self.worker_id, json.dumps(self.stats.snapshot()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.stats_every_s)


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


def _dead_letters(reply: Reply, reply_to: str | None) -> bool:
    """Whether a request goes to the dead-letter stream: refused as malformed, unanswerable, or given up on."""
    return reply.status in (Status.DEAD_LETTER, Status.BAD_REQUEST, Status.INFERENCE_FAILED) or (
        reply_to is None and not reply.ok)


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\:'\"]+)+")


def _for_client(e: BaseException) -> str:
    """What a sender is told of an exception raised on its request: the type and the first line of
    the message (a KeyError names the missing key), with file paths cut out; never a traceback."""
    return _PATH.sub("<path>", _safe_message(e))


def _safe_message(e: BaseException) -> str:
    """One line, no traceback, no object reprs beyond 200 characters."""
    if isinstance(e, BrokerError):
        return str(e)[:200]
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:200]
