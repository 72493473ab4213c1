"""The simulator's side of the wire: send an observation, get an action chunk back.

`PolicyClient.act` XADDs a request to the policy's request stream and blocks on the rollout's own
reply stream. If no reply comes within `reply_timeout_s` it resends the same sequence number (a
worker may then answer twice; the duplicate has the old sequence number and is skipped by the next
call), and after `deadline_s` it raises `PolicyTimeout`. Replies whose sequence number is not the
one awaited are stale and ignored. `SyncPolicyClient` is the same for code without an event loop.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis

from broker.codec import Codec, MsgpackNumpyCodec
from broker.errors import PolicyErrorReply, PolicyTimeout, ProtocolError, RedisUnavailable
from broker.keys import Keys, shard_of
from broker.schema import RETRYABLE, Reply, Request
from broker.settings import ClientSettings

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_MAX_BLOCK_S = 2.0
"""One blocking XREAD never outlasts this (well under RedisSettings.socket_timeout_s), so a read timeout
means Redis is gone, never that no reply came yet."""


def _block_ms(left_s: float) -> int:
    return max(1, int(min(left_s, _MAX_BLOCK_S) * 1000))


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


class _Core:
    """What the async and sync clients share: keys, sequence numbers, request/reply handling."""

    def __init__(self, keys: Keys, policy: str, settings: ClientSettings, codec: Codec | None, shards: int):
        self.keys = keys
        self.policy = policy
        self.settings = settings
        self.codec = codec or MsgpackNumpyCodec()
        self.shards = shards
        self.rollouts: dict[str, _Rollout] = {}

    def begin(self, rollout: str, obs: Any) -> tuple[_Rollout, str, str, dict[str, Any]]:
        state = self.rollouts.setdefault(rollout, _Rollout())
        shard = shard_of(rollout, self.shards)
        reply_key = self.keys.replies(self.policy, rollout, shard)
        request = Request(
            rollout=rollout,
            seq=state.seq,
            reply_to=reply_key,
            obs=obs if isinstance(obs, bytes) else self.codec.encode(obs),
            ttl_ms=int(self.settings.deadline_s * 1000),
        )
        return state, self.keys.requests(self.policy, shard), reply_key, request.to_fields()

    def match(self, state: _Rollout, entries: list) -> Reply | None:
        """The reply to the awaited sequence number among `entries`, if any; stale ones are skipped."""
        for entry_id, fields in entries:
            state.last_id = entry_id
            try:
                reply = Reply.from_fields(fields)
            except ProtocolError:
                continue
            if reply.seq == state.seq:
                return reply
        return None

    def finish(self, state: _Rollout, reply: Reply, started: float, sends: int) -> ActResult:
        state.seq += 1
        if not reply.ok:
            raise PolicyErrorReply(reply.status, reply.error)
        return ActResult(
            chunk=self.codec.decode(reply.action),
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

    async def act(self, rollout: str, obs: Any) -> ActResult:
        core = self._core
        state, stream, reply_key, fields = core.begin(rollout, obs)
        started = time.perf_counter()
        deadline = started + core.settings.deadline_s
        sends = 0
        errors = 0
        while True:
            now = time.perf_counter()
            if now >= deadline:
                state.seq += 1
                if errors and not sends:
                    raise RedisUnavailable("Redis unreachable: no request could be sent before the deadline")
                raise _timeout(rollout, state.seq - 1, core.policy, core.settings.deadline_s, sends)
            try:
                if state.last_id is None:
                    last = await self.redis.xrevrange(reply_key, count=1)
                    state.last_id = last[0][0] if last else b"0-0"
                await self.redis.xadd(stream, fields)
                sends += 1
                wait_until = min(deadline, time.perf_counter() + core.settings.reply_timeout_s)
                while (left := wait_until - time.perf_counter()) > 0:
                    got = await self.redis.xread({reply_key: state.last_id}, block=_block_ms(left))
                    if not got:
                        continue
                    reply = core.match(state, got[0][1])
                    if reply is None:
                        continue
                    if reply.status in RETRYABLE and sends <= core.settings.max_resends:
                        await asyncio.sleep(core.backoff(sends))
                        break
                    return core.finish(state, reply, started, sends)
            except _REDIS_DOWN as e:
                errors += 1
                if time.perf_counter() + core.backoff(errors) >= deadline:
                    state.seq += 1
                    raise RedisUnavailable(f"Redis unreachable while waiting for a reply: {e}") from None
                await asyncio.sleep(core.backoff(errors))
            if sends > core.settings.max_resends:
                state.seq += 1
                raise _timeout(rollout, state.seq - 1, core.policy, core.settings.deadline_s, sends)

    def forget(self, rollout: str) -> None:
        """Drop a finished rollout's sequence state."""
        self._core.rollouts.pop(rollout, None)


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

    def metadata(self) -> dict[str, Any]:
        raw = self.redis.hget(self._core.keys.policy_meta(self._core.policy), "metadata")
        if raw is None:
            raise PolicyTimeout(f"policy {self._core.policy!r} has published no metadata: is a worker running?")
        return json.loads(raw)

    def act(self, rollout: str, obs: Any) -> ActResult:
        core = self._core
        state, stream, reply_key, fields = core.begin(rollout, obs)
        started = time.perf_counter()
        deadline = started + core.settings.deadline_s
        sends = 0
        errors = 0
        while True:
            if time.perf_counter() >= deadline:
                state.seq += 1
                if errors and not sends:
                    raise RedisUnavailable("Redis unreachable: no request could be sent before the deadline")
                raise _timeout(rollout, state.seq - 1, core.policy, core.settings.deadline_s, sends)
            try:
                if state.last_id is None:
                    last = self.redis.xrevrange(reply_key, count=1)
                    state.last_id = last[0][0] if last else b"0-0"
                self.redis.xadd(stream, fields)
                sends += 1
                wait_until = min(deadline, time.perf_counter() + core.settings.reply_timeout_s)
                while (left := wait_until - time.perf_counter()) > 0:
                    got = self.redis.xread({reply_key: state.last_id}, block=_block_ms(left))
                    if not got:
                        continue
                    reply = core.match(state, got[0][1])
                    if reply is None:
                        continue
                    if reply.status in RETRYABLE and sends <= core.settings.max_resends:
                        time.sleep(core.backoff(sends))
                        break
                    return core.finish(state, reply, started, sends)
            except _REDIS_DOWN as e:
                errors += 1
                if time.perf_counter() + core.backoff(errors) >= deadline:
                    state.seq += 1
                    raise RedisUnavailable(f"Redis unreachable while waiting for a reply: {e}") from None
                time.sleep(core.backoff(errors))
            if sends > core.settings.max_resends:
                state.seq += 1
                raise _timeout(rollout, state.seq - 1, core.policy, core.settings.deadline_s, sends)


async def fetch_metadata(r: aredis.Redis, keys: Keys, policy: str, wait_s: float = 0.0) -> dict[str, Any]:
    """Read a policy's metadata hash, waiting up to `wait_s` for a worker to publish it."""
    deadline = time.monotonic() + wait_s
    while True:
        raw = await r.hget(keys.policy_meta(policy), "metadata")
        if raw is not None:
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
