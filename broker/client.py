"""The simulator's side of the wire: send an observation, get an action chunk back.

`PolicyClient.act` XADDs a request to the policy's request stream and blocks on the rollout's own
reply stream, both in one pipelined round trip (Redis runs the XADD, then the XREAD BLOCK). Every
request carries a fresh random nonce that the worker echoes: only the reply with that nonce is
taken, so a reply to another request (an earlier step's duplicate, or a request someone else sent
under this rollout id) is never mistaken for this one. If no reply comes within
`reply_timeout_s` it resends the request (same seq and nonce, the remaining deadline, and the
first send's entry id, so a worker drops the resend while the original is still queued or held);
after `deadline_s` it deletes its request entries (cancel) and raises `PolicyTimeout`.
`SyncPolicyClient` is the same for code without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from broker import PROTOCOL_VERSION
from broker.codec import Codec, MsgpackNumpyCodec, first_non_finite
from broker.connection import REDIS_DOWN
from broker.errors import (
    BrokerError,
    PolicyErrorReply,
    PolicyTimeout,
    ProtocolError,
    RedisUnavailable,
    SharedFramesUnavailable,
)
from broker.frames import FrameArena
from broker.keys import Keys, check_name, shard_of
from broker.polling import LEAD_S
from broker.schema import RETRYABLE, Reply, Request, Status
from broker.settings import ClientSettings

_MAX_BLOCK_S = 2.0
"""One blocking XREAD never outlasts this (well under RedisSettings.socket_timeout_s), so a read timeout
means Redis is gone, never that no reply came yet."""


def _block_ms(left_s: float) -> int:
    return max(1, int(min(left_s, _MAX_BLOCK_S) * 1000))


def _id_ms(entry_id: bytes | str) -> int:
    """Redis's time (ms) in a stream entry id."""
    raw = entry_id if isinstance(entry_id, bytes) else entry_id.encode()
    return int(raw.split(b"-", 1)[0])


def _read_block(poll: bool, left_s: float) -> int | None:
    """An XREAD's BLOCK: None (do not block) when polling."""
    return None if poll else _block_ms(left_s)


@dataclass
class ActResult:
    """An action chunk and how it was served."""

    chunk: dict[str, Any]
    seq: int
    round_trip_ms: float
    queue_ms: float
    infer_ms: float
    batch: int
    worker: str
    sends: int


@dataclass
class _Rollout:
    seq: int = 0
    last_id: bytes | None = None
    """Reply-stream position; None until the first request, when it starts after any existing
    entries (a reused rollout id must never pick up the replies of an earlier run)."""
    sent_ms: int = 0
    """Redis's time (ms, from the entry id) of the request's first send."""
    round_trips: deque[float] = field(default_factory=lambda: deque(maxlen=8))
    """For `ClientSettings.poll_ms`: the last round trips (s) as Redis saw them, request XADD to reply
    XADD; unlike the client's own, they do not grow when the client reads a reply late."""


@dataclass
class _Call:
    """One request being answered: what a resend sends, and the entries of its sends (to cancel)."""

    rollout: str
    state: _Rollout
    stream: str
    reply_key: str
    request: Request
    deadline: float
    """`time.perf_counter()` time after which the call gives up."""
    sent_ids: list[bytes] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """The next send's fields: the first send with the whole deadline, a resend with what is left
        of it (so no worker infers it after the caller gave up) and the first send's entry id."""
        r = self.request
        if self.sent_ids:
            r.resend = len(self.sent_ids)
            first = self.sent_ids[0]
            r.orig = first.decode() if isinstance(first, bytes) else str(first)
            r.ttl_ms = max(1, int((self.deadline - time.perf_counter()) * 1000))
        return r.to_fields()


class _Core:
    """What the async and sync clients share: keys, sequence numbers, request/reply handling."""

    def __init__(self, keys: Keys, policy: str, settings: ClientSettings, codec: Codec | None, shards: int):
        self.keys = keys
        self.policy = policy
        self.settings = settings
        self.codec = codec or MsgpackNumpyCodec()
        self.shards = shards
        self.rollouts: dict[str, _Rollout] = {}
        self.frames = FrameArena(settings.frames_dir) if settings.shared_frames else None

    def begin(self, rollout: str, obs: Any, steps: int = 0) -> _Call:
        if steps < 0:
            raise ValueError(f"steps must be >= 0 (0 = the whole chunk), got {steps}")
        check_name("rollout", rollout)
        state = self.rollouts.setdefault(rollout, _Rollout())
        shard = shard_of(rollout, self.shards)
        request = Request(
            rollout=rollout,
            seq=state.seq,
            obs=obs if isinstance(obs, bytes) else self.codec.encode(self._frames_out(rollout, obs)),
            ttl_ms=int(self.settings.deadline_s * 1000),
            steps=steps,
        )
        return _Call(rollout, state, self.keys.requests(self.policy, shard),
                     self.keys.replies(self.policy, rollout, shard), request,
                     time.perf_counter() + self.settings.deadline_s)

    def frame_views(self, rollout: str, layout: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, Any]:
        if self.frames is None:
            raise SharedFramesUnavailable("frame views live in shared memory: create the client with "
                                          "ClientSettings(shared_frames=True)")
        return self.frames.views(rollout, layout)

    def _frames_out(self, rollout: str, obs: Any) -> Any:
        return obs if self.frames is None else self.frames.externalize(rollout, obs)

    def forget(self, rollout: str) -> None:
        self.rollouts.pop(rollout, None)
        if self.frames is not None:
            self.frames.forget(rollout)

    def close(self) -> None:
        if self.frames is not None:
            self.frames.close()

    def match(self, call: _Call, entries: list) -> Reply | None:
        """The reply to `call` among `entries`, if any: the one that echoes its nonce. Every other
        entry (an earlier step's duplicate, an answer to someone else's request) is skipped."""
        want = call.request.nonce
        for entry_id, fields in entries:
            call.state.last_id = entry_id
            try:
                reply = Reply.from_fields(fields)
            except ProtocolError:
                continue
            if reply.nonce == want and reply.seq in (call.request.seq, -1):
                return reply
        return None

    def poll_plan(self, states: Iterable[_Rollout], started: float) -> tuple[bool, float]:
        """With `poll_ms`: whether the next read polls (does not block), and how long to sleep
        before it; (False, 0) when the read should block as usual."""
        if self.settings.poll_ms <= 0:
            return False, 0.0
        expected = min((min(s.round_trips) for s in states if s.round_trips), default=None)
        if expected is None:
            return False, 0.0
        left = started + expected - LEAD_S - time.perf_counter()
        if left > 0:
            return True, left
        return -left < LEAD_S + self.settings.poll_ms / 1000, 0.0

    def sent(self, state: _Rollout, entry_id: bytes, sends: int) -> None:
        """Note a request's entry id (Redis's clock) on its first send, for `poll_ms`'s round trips."""
        if not sends and self.settings.poll_ms:
            state.sent_ms = _id_ms(entry_id)

    def finish(self, state: _Rollout, reply: Reply, started: float, sends: int) -> ActResult:
        state.seq += 1
        if not reply.ok:
            raise PolicyErrorReply(reply.status, reply.error)
        if sends == 1 and state.sent_ms and state.last_id:
            state.round_trips.append(max(0, _id_ms(state.last_id) - state.sent_ms) / 1000)
        chunk = self.codec.decode(reply.action)
        if self.settings.check_finite and (key := first_non_finite(chunk)) is not None:
            raise PolicyErrorReply(Status.BAD_ACTION, f"the policy's action {key!r} holds NaN or infinity")
        return ActResult(
            chunk=chunk,
            seq=reply.seq,
            round_trip_ms=(time.perf_counter() - started) * 1000,
            queue_ms=reply.queue_ms,
            infer_ms=reply.infer_ms,
            batch=reply.batch,
            worker=reply.worker,
            sends=sends,
        )

    def backoff(self, attempt: int) -> float:
        base = self.settings.backoff_s * (2 ** min(attempt, 6))
        return base * (0.5 + random.random())


def _cancel(pipe: Any, call: _Call) -> Any:
    """Queue the deletion of a call's request entries: a worker that has not read them never will."""
    if call.sent_ids:
        pipe.xdel(call.stream, *call.sent_ids)
    return pipe


def _timeout(rollout: str, seq: int, policy: str, deadline_s: float, sends: int) -> PolicyTimeout:
    return PolicyTimeout(
        f"no reply from policy {policy!r} for rollout {rollout!r} step {seq} within {deadline_s:.0f}s "
        f"({sends} sends): are policy workers running and connected to the same Redis and namespace?"
    )


class PolicyClient:
    """Async client of one policy deployment. One instance can serve many rollouts concurrently."""

    def __init__(
        self,
        redis_client: aredis.Redis,
        policy: str,
        keys: Keys | None = None,
        settings: ClientSettings | None = None,
        codec: Codec | None = None,
        shards: int = 1,
    ) -> None:
        self.redis = redis_client
        self._core = _Core(keys or Keys(), policy, settings or ClientSettings(), codec, shards)

    async def metadata(self, wait_s: float = 0.0) -> dict[str, Any]:
        """The policy's published metadata (schemas, chunk length, action horizon, model id)."""
        return await fetch_metadata(self.redis, self._core.keys, self._core.policy, wait_s)

    async def act(self, rollout: str, obs: Any, steps: int = 0) -> ActResult:
        """One action chunk for `obs`. `steps` > 0 asks for only the chunk's first `steps` steps
        (those the simulator will execute before asking again): a smaller reply."""
        core = self._core
        call = core.begin(rollout, obs, steps)
        state, reply_key = call.state, call.reply_key
        started = time.perf_counter()
        deadline = call.deadline
        sends = 0
        errors = 0
        try:
            while True:
                now = time.perf_counter()
                if now >= deadline:
                    if errors and not sends:
                        raise RedisUnavailable("Redis unreachable: no request could be sent before the deadline")
                    raise _timeout(rollout, state.seq, core.policy, core.settings.deadline_s, sends)
                try:
                    if state.last_id is None:
                        last = await self.redis.xrevrange(reply_key, count=1)
                        state.last_id = last[0][0] if last else b"0-0"
                    wait_until = min(deadline, time.perf_counter() + core.settings.reply_timeout_s)
                    poll, _ = core.poll_plan((state,), started)
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.xadd(call.stream, call.fields())
                    pipe.xread({reply_key: state.last_id}, block=_read_block(poll, wait_until - time.perf_counter()))
                    sent, got = await pipe.execute()
                    core.sent(state, sent, sends)
                    call.sent_ids.append(sent)
                    sends += 1
                    while True:
                        reply = core.match(call, got[0][1]) if got else None
                        if reply is not None:
                            if reply.status in RETRYABLE and sends <= core.settings.max_resends:
                                await asyncio.sleep(core.backoff(sends))
                                break
                            return core.finish(state, reply, started, sends)
                        if (left := wait_until - time.perf_counter()) <= 0:
                            break
                        poll, nap = core.poll_plan((state,), started)
                        if nap:
                            await asyncio.sleep(min(nap, left))
                        got = await self.redis.xread({reply_key: state.last_id}, block=_read_block(poll, left))
                except REDIS_DOWN as e:
                    errors += 1
                    if time.perf_counter() + core.backoff(errors) >= deadline:
                        raise RedisUnavailable(f"Redis unreachable while waiting for a reply: {e}") from None
                    await asyncio.sleep(core.backoff(errors))
                if sends > core.settings.max_resends:
                    raise _timeout(rollout, state.seq, core.policy, core.settings.deadline_s, sends)
        except BrokerError:
            if state.seq == call.request.seq:  # gave up (finish() moved on already otherwise)
                state.seq += 1
                with contextlib.suppress(*REDIS_DOWN, ResponseError):  # a refused XDEL: the TTL ends it
                    await _cancel(self.redis.pipeline(transaction=False), call).execute()
            raise

    async def act_many(self, items: Sequence[tuple[str, Any]], steps: int = 0) -> list[ActResult | BrokerError]:
        """`act` for several rollouts at once: one chunk (or the error) per (rollout, observation).

        For a simulator that steps many environments together: the K requests go out in one
        pipeline, followed by one XREAD BLOCK over the K reply streams, and further XREADs collect
        the rest, so a step of K environments costs a few round trips instead of 2K. Resends,
        stale replies, retryable errors and the deadline follow `act`'s rules, per rollout; a
        rollout that fails gets its `BrokerError` in its place in the result (as
        `asyncio.gather(..., return_exceptions=True)` over `act` would), the others are unaffected.
        """
        core = self._core
        s = core.settings
        calls = [core.begin(rollout, obs, steps) for rollout, obs in items]
        keys = [c.reply_key.encode() for c in calls]
        if len(set(keys)) != len(keys):
            raise ValueError("act_many takes each rollout at most once per call")
        by_key = {k: i for i, k in enumerate(keys)}
        out: list[ActResult | BrokerError | None] = [None] * len(calls)
        started = time.perf_counter()
        deadline = started + s.deadline_s
        sends = [0] * len(calls)
        sent_at = [0.0] * len(calls)
        retry_at: dict[int, float] = {}
        pending = set(range(len(calls)))
        due = set(pending)
        errors = 0

        gave_up: list[_Call] = []

        def fail(i: int, error: BrokerError) -> None:
            calls[i].state.seq += 1
            out[i] = error
            pending.discard(i)
            due.discard(i)
            gave_up.append(calls[i])

        while pending:
            now = time.perf_counter()
            for i in sorted(pending):
                timed_out = i not in due and i not in retry_at and now - sent_at[i] >= s.reply_timeout_s
                if now >= deadline or ((timed_out or retry_at.get(i, deadline) <= now) and sends[i] > s.max_resends):
                    if errors and not sends[i]:
                        fail(i, RedisUnavailable("Redis unreachable: no request could be sent before the deadline"))
                    else:
                        fail(i, _timeout(items[i][0], calls[i].state.seq, core.policy, s.deadline_s, sends[i]))
                elif timed_out or retry_at.get(i, deadline) <= now:
                    retry_at.pop(i, None)
                    due.add(i)
            if not pending:
                break
            wake = min([deadline, *retry_at.values(), *([now + s.reply_timeout_s] if due else []),
                        *(sent_at[i] + s.reply_timeout_s for i in pending if i not in due and i not in retry_at)])
            poll, nap = core.poll_plan((calls[i].state for i in pending), started)
            if nap and not due:
                await asyncio.sleep(min(nap, max(0.0, wake - time.perf_counter())))
            try:
                fresh = [i for i in due if calls[i].state.last_id is None]
                if fresh:
                    pipe = self.redis.pipeline(transaction=False)
                    for i in fresh:
                        pipe.xrevrange(calls[i].reply_key, count=1)
                    for i, last in zip(fresh, await pipe.execute(), strict=True):
                        calls[i].state.last_id = last[0][0] if last else b"0-0"
                pipe = self.redis.pipeline(transaction=False)
                sending = sorted(due)
                for i in sending:
                    pipe.xadd(calls[i].stream, calls[i].fields())
                pipe.xread({calls[i].reply_key: calls[i].state.last_id for i in sorted(pending)},
                           block=_read_block(poll, wake - time.perf_counter()))
                *sent_ids, got = await pipe.execute()
            except REDIS_DOWN as e:
                errors += 1
                if time.perf_counter() + core.backoff(errors) >= deadline:
                    for i in sorted(pending):
                        fail(i, RedisUnavailable(f"Redis unreachable while waiting for a reply: {e}"))
                    break
                await asyncio.sleep(core.backoff(errors))
                continue
            for i, sent in zip(sending, sent_ids, strict=True):
                core.sent(calls[i].state, sent, sends[i])
                calls[i].sent_ids.append(sent)
                sends[i] += 1
                sent_at[i] = now
            due.clear()
            for key, entries in got or []:
                i = by_key.get(key if isinstance(key, bytes) else key.encode())
                if i is None or i not in pending:
                    continue
                reply = core.match(calls[i], entries)
                if reply is None:
                    continue
                if reply.status in RETRYABLE and sends[i] <= s.max_resends:
                    retry_at[i] = time.perf_counter() + core.backoff(sends[i])
                    continue
                pending.discard(i)
                retry_at.pop(i, None)
                try:
                    out[i] = core.finish(calls[i].state, reply, started, sends[i])
                except BrokerError as e:
                    out[i] = e
        if gave_up:
            pipe = self.redis.pipeline(transaction=False)
            for call in gave_up:
                _cancel(pipe, call)
            with contextlib.suppress(*REDIS_DOWN, ResponseError):  # a refused XDEL: the TTL ends it
                await pipe.execute()
        return out  # type: ignore[return-value]

    def forget(self, rollout: str) -> None:
        """Drop a finished rollout's sequence state (and its shared-memory segment)."""
        self._core.forget(rollout)

    def frame_views(self, rollout: str, layout: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, Any]:
        """Writable arrays in the rollout's shared-memory segment, key -> (shape, dtype), for a
        simulator that renders straight into them (`FrameArena.views`): put them in the next
        observation and `act` sends them without a copy. Needs `shared_frames`; call it before each
        write, after the previous reply."""
        return self._core.frame_views(rollout, layout)

    def close(self) -> None:
        """Unlink this client's shared-memory segments (also done at interpreter exit)."""
        self._core.close()


class SyncPolicyClient:
    """Blocking twin of `PolicyClient`, for simulators without an event loop."""

    def __init__(
        self,
        redis_client: redis.Redis,
        policy: str,
        keys: Keys | None = None,
        settings: ClientSettings | None = None,
        codec: Codec | None = None,
        shards: int = 1,
    ) -> None:
        self.redis = redis_client
        self._core = _Core(keys or Keys(), policy, settings or ClientSettings(), codec, shards)

    def forget(self, rollout: str) -> None:
        """Drop a finished rollout's sequence state (and its shared-memory segment)."""
        self._core.forget(rollout)

    def frame_views(self, rollout: str, layout: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, Any]:
        """Writable arrays in the rollout's shared-memory segment, key -> (shape, dtype), for a
        simulator that renders straight into them (`FrameArena.views`): put them in the next
        observation and `act` sends them without a copy. Needs `shared_frames`; call it before each
        write, after the previous reply."""
        return self._core.frame_views(rollout, layout)

    def close(self) -> None:
        """Unlink this client's shared-memory segments (also done at interpreter exit)."""
        self._core.close()

    def metadata(self) -> dict[str, Any]:
        raw, spoken = self.redis.hmget(self._core.keys.policy_meta(self._core.policy), ["metadata", "protocol"])
        if raw is not None:
            check_protocol(self._core.policy, spoken)
        if raw is None:
            raise PolicyTimeout(f"policy {self._core.policy!r} has published no metadata: is a worker running?")
        return json.loads(raw)

    def act(self, rollout: str, obs: Any, steps: int = 0) -> ActResult:
        """See `PolicyClient.act`."""
        core = self._core
        call = core.begin(rollout, obs, steps)
        state, reply_key = call.state, call.reply_key
        started = time.perf_counter()
        deadline = call.deadline
        sends = 0
        errors = 0
        try:
            while True:
                if time.perf_counter() >= deadline:
                    if errors and not sends:
                        raise RedisUnavailable("Redis unreachable: no request could be sent before the deadline")
                    raise _timeout(rollout, state.seq, core.policy, core.settings.deadline_s, sends)
                try:
                    if state.last_id is None:
                        last = self.redis.xrevrange(reply_key, count=1)
                        state.last_id = last[0][0] if last else b"0-0"
                    wait_until = min(deadline, time.perf_counter() + core.settings.reply_timeout_s)
                    poll, _ = core.poll_plan((state,), started)
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.xadd(call.stream, call.fields())
                    pipe.xread({reply_key: state.last_id}, block=_read_block(poll, wait_until - time.perf_counter()))
                    sent, got = pipe.execute()
                    core.sent(state, sent, sends)
                    call.sent_ids.append(sent)
                    sends += 1
                    while True:
                        reply = core.match(call, got[0][1]) if got else None
                        if reply is not None:
                            if reply.status in RETRYABLE and sends <= core.settings.max_resends:
                                time.sleep(core.backoff(sends))
                                break
                            return core.finish(state, reply, started, sends)
                        if (left := wait_until - time.perf_counter()) <= 0:
                            break
                        poll, nap = core.poll_plan((state,), started)
                        if nap:
                            time.sleep(min(nap, left))
                        got = self.redis.xread({reply_key: state.last_id}, block=_read_block(poll, left))
                except REDIS_DOWN as e:
                    errors += 1
                    if time.perf_counter() + core.backoff(errors) >= deadline:
                        raise RedisUnavailable(f"Redis unreachable while waiting for a reply: {e}") from None
                    time.sleep(core.backoff(errors))
                if sends > core.settings.max_resends:
                    raise _timeout(rollout, state.seq, core.policy, core.settings.deadline_s, sends)
        except BrokerError:
            if state.seq == call.request.seq:
                state.seq += 1
                with contextlib.suppress(*REDIS_DOWN, ResponseError):  # a refused XDEL: the TTL ends it
                    _cancel(self.redis.pipeline(transaction=False), call).execute()
            raise


def check_protocol(policy: str, spoken: bytes | str | None) -> None:
    """Refuse a policy whose workers do not speak this client's protocol version (the hash's
    `protocol` field lists the versions they speak, comma-separated): every request would go
    unanswered, so say so now rather than time out later."""
    text = spoken.decode() if isinstance(spoken, bytes) else (spoken or "")
    versions = {v.strip() for v in text.split(",") if v.strip()}
    if versions and str(PROTOCOL_VERSION) not in versions:
        raise ProtocolError(f"policy {policy!r} is served by workers that speak protocol {text}, this client speaks "
                            f"{PROTOCOL_VERSION}: upgrade the older side so that they match (docs/PROTOCOL.md §8)")


async def fetch_metadata(r: aredis.Redis, keys: Keys, policy: str, wait_s: float = 0.0) -> dict[str, Any]:
    """Read a policy's metadata hash, waiting up to `wait_s` for a worker to publish it."""
    deadline = time.monotonic() + wait_s
    while True:
        raw, spoken = await r.hmget(keys.policy_meta(policy), ["metadata", "protocol"])
        if raw is not None:
            check_protocol(policy, spoken)
            return json.loads(raw)
        if time.monotonic() >= deadline:
            raise PolicyTimeout(
                f"policy {policy!r} has published no metadata under namespace {keys.ns!r}: is a policy worker "
                "running against this Redis?"
            )
        await asyncio.sleep(0.1)


class ActionChunker:
    """Client-side action chunking: query the policy only when the current chunk is used up.

    The reference design executes `action_horizon` = 8 of each 40-step chunk, then re-queries.
    """

    def __init__(self, action_horizon: int = 8) -> None:
        if action_horizon < 1:
            raise ValueError("action_horizon must be >= 1")
        self.action_horizon = action_horizon
        self._chunk: dict[str, Any] | None = None
        self._t = 0
        self._usable = 0

    def needs_query(self) -> bool:
        return self._chunk is None or self._t >= self._usable

    def set_chunk(self, chunk: dict[str, Any]) -> None:
        lengths = {v.shape[1] for v in chunk.values() if hasattr(v, "shape") and v.ndim >= 2}
        length = min(lengths) if lengths else self.action_horizon
        self._chunk = chunk
        self._t = 0
        self._usable = min(self.action_horizon, length)

    def next(self) -> tuple[dict[str, Any], int]:
        """The current chunk and the step index to execute; advances by one step."""
        if self.needs_query():
            raise RuntimeError("chunk used up: query the policy and call set_chunk first")
        t = self._t
        self._t += 1
        return self._chunk, t  # type: ignore[return-value]

    def reset(self) -> None:
        self._chunk = None
        self._t = 0
