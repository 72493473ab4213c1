"""The simulator's side of the wire: send observations, get action chunks back.

`PolicyClient.act_many` XADDs one request per rollout to the policy's request stream and blocks on
the rollouts' own reply streams, all in one pipelined round trip (Redis runs the XADDs, then the
XREAD BLOCK); `act` is `act_many` for one rollout. Every request carries a fresh random nonce that
the worker echoes: only the reply with that nonce is taken, so a reply to another request (an
earlier step's duplicate, or a request someone else sent under this rollout id) is never mistaken
for this one. Without a reply within `reply_timeout_s` a request is resent (same seq and nonce, the
remaining deadline, and the first send's entry id, so a worker drops the resend while the original
is still queued or held); after `deadline_s` its entries are deleted (cancel) and the call fails
with `PolicyTimeout`.

Those rules live in `rolloutq.broker.client_core.Exchange`, which does no I/O; the two clients here only run
its steps against Redis and sleep where it says: `PolicyClient` with asyncio, `SyncPolicyClient`
for code without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aredis
from redis.exceptions import ResponseError
from rolloutq.broker import PROTOCOL_VERSION
from rolloutq.broker.client_chunker import ActionChunker
from rolloutq.broker.client_core import ActResult, Call, Done, Exchange, Lookup, Pause, RolloutCursor, SendAndRead, Step
from rolloutq.broker.codec import Codec, MsgpackNumpyCodec
from rolloutq.broker.connection import REDIS_DOWN
from rolloutq.broker.errors import BrokerError, PolicyTimeout, ProtocolError
from rolloutq.broker.frames import FrameArena
from rolloutq.broker.keys import Keys, check_name, shard_of
from rolloutq.broker.schema import MAX_ENDED
from rolloutq.broker.settings import ClientSettings

__all__ = ["ActResult", "ActionChunker", "PolicyClient", "SyncPolicyClient", "check_protocol", "fetch_metadata"]

Results = list[ActResult | BrokerError]


class _Client:
    """What both clients hold: the policy's keys and settings, the codec, shared frames and each
    rollout's cursor; it turns (rollout, observation) pairs into an `Exchange` for a driver."""

    def __init__(self, policy: str, keys: Keys | None, settings: ClientSettings | None, codec: Codec | None,
                 shards: int) -> None:
        self.policy = policy
        self.keys = keys or Keys()
        self.settings = settings or ClientSettings()
        self.codec = codec or MsgpackNumpyCodec()
        self.shards = shards
        self._cursors: dict[str, RolloutCursor] = {}
        self._ended: list[str] = []  # forgotten rollouts, told to the worker with the next request
        self._frames = FrameArena(self.settings.frames_dir) if self.settings.shared_frames else None

    def forget(self, rollout: str) -> None:
        """Drop a finished rollout's sequence state (and its shared-memory segment)."""
        self._cursors.pop(rollout, None)
        if self._frames is not None:
            self._frames.forget(rollout)
        self._ended = [*self._ended, rollout][-MAX_ENDED:]

    def close(self) -> None:
        """Unlink this client's shared-memory segments (also done at interpreter exit)."""
        if self._frames is not None:
            self._frames.close()

    def _exchange(self, items: Sequence[tuple[str, Any]], steps: int) -> Exchange:
        if steps < 0:
            raise ValueError(f"steps must be >= 0 (0 = the whole chunk), got {steps}")
        for rollout, _ in items:
            check_name("rollout", rollout)
        if len({rollout for rollout, _ in items}) != len(items):
            raise ValueError("act_many takes each rollout at most once per call")
        payloads = [self._encode(rollout, obs) for rollout, obs in items]
        now = time.perf_counter()
        calls = []
        for (rollout, _), payload in zip(items, payloads, strict=True):
            shard = shard_of(rollout, self.shards)
            cursor = self._cursors.setdefault(rollout, RolloutCursor())
            call = Call.begin(cursor, rollout, payload, steps, self.keys.requests(self.policy, shard),
                              self.keys.replies(self.policy, rollout, shard), now, self.settings.deadline_s)
            if self._ended:  # ended rollouts go to the worker that batched them: the one reading their shard
                call.request.ended = tuple(r for r in self._ended if shard_of(r, self.shards) == shard)
                self._ended = [r for r in self._ended if r not in call.request.ended]
            calls.append(call)
        return Exchange(calls, self.settings, self.policy, self.codec.decode)

    def _encode(self, rollout: str, obs: Any) -> bytes:
        if isinstance(obs, bytes):
            return obs
        return self.codec.encode(obs if self._frames is None else self._frames.externalize(rollout, obs))


def _queue(pipe: Any, step: Step) -> Any:
    """The Redis commands of one step of an `Exchange`, queued on a (non-transactional) pipeline."""
    if isinstance(step, Lookup):
        for key in step.reply_keys:
            pipe.xrevrange(key, count=1)
    elif isinstance(step, SendAndRead):
        for send in step.sends:
            pipe.xadd(send.stream, send.fields)
        pipe.xread(step.reads, block=step.block_ms)
    elif isinstance(step, Done):
        for cancel in step.cancels:
            pipe.xdel(cancel.stream, *cancel.entry_ids)
    return pipe


def _only(results: Results) -> ActResult:
    if isinstance(results[0], BrokerError):
        raise results[0]
    return results[0]


class PolicyClient(_Client):
    """Async client of one policy deployment. One instance can serve many rollouts concurrently."""

    def __init__(self, redis_client: aredis.Redis, policy: str, keys: Keys | None = None,
                 settings: ClientSettings | None = None, codec: Codec | None = None, shards: int = 1) -> None:
        super().__init__(policy, keys, settings, codec, shards)
        self.redis = redis_client

    async def metadata(self, wait_s: float = 0.0) -> dict[str, Any]:
        """The policy's published metadata (schemas, chunk length, action horizon, model id)."""
        return await fetch_metadata(self.redis, self.keys, self.policy, wait_s)

    async def act(self, rollout: str, obs: Any, steps: int = 0) -> ActResult:
        """One action chunk for `obs`. `steps` > 0 asks for only the chunk's first `steps` steps
        (those the simulator will execute before asking again): a smaller reply."""
        return _only(await self.act_many([(rollout, obs)], steps))

    async def act_many(self, items: Sequence[tuple[str, Any]], steps: int = 0) -> Results:
        """`act` for several rollouts at once: one chunk (or the error) per (rollout, observation).

        For a simulator that steps many environments together: the K requests go out in one
        pipeline, followed by one XREAD BLOCK over the K reply streams, and further XREADs collect
        the rest, so a step of K environments costs a few round trips instead of 2K. Resends,
        stale replies, retryable errors and the deadline follow the same rules per rollout; a
        rollout that fails gets its `BrokerError` in its place in the result (as
        `asyncio.gather(..., return_exceptions=True)` over `act` would), the others are unaffected.
        """
        exchange = self._exchange(items, steps)
        while not isinstance(step := exchange.next(time.perf_counter()), Done):
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                continue
            try:
                got = await _queue(self.redis.pipeline(transaction=False), step).execute()
            except REDIS_DOWN as e:
                exchange.failed(e, time.perf_counter())
            else:
                exchange.took(step, got, time.perf_counter())
        if step.cancels:
            with contextlib.suppress(*REDIS_DOWN, ResponseError):  # a refused XDEL: the TTL ends it
                await _queue(self.redis.pipeline(transaction=False), step).execute()
        return step.results


class SyncPolicyClient(_Client):
    """Blocking twin of `PolicyClient`, for simulators without an event loop."""

    def __init__(self, redis_client: redis.Redis, policy: str, keys: Keys | None = None,
                 settings: ClientSettings | None = None, codec: Codec | None = None, shards: int = 1) -> None:
        super().__init__(policy, keys, settings, codec, shards)
        self.redis = redis_client

    def metadata(self) -> dict[str, Any]:
        """See `PolicyClient.metadata` (without waiting)."""
        raw, spoken = self.redis.hmget(self.keys.policy_meta(self.policy), ["metadata", "protocol"])
        if raw is None:
            raise PolicyTimeout(f"policy {self.policy!r} has published no metadata: is a worker running?")
        check_protocol(self.policy, spoken)
        return json.loads(raw)

    def act(self, rollout: str, obs: Any, steps: int = 0) -> ActResult:
        """See `PolicyClient.act`."""
        return _only(self.act_many([(rollout, obs)], steps))

    def act_many(self, items: Sequence[tuple[str, Any]], steps: int = 0) -> Results:
        """See `PolicyClient.act_many`."""
        exchange = self._exchange(items, steps)
        while not isinstance(step := exchange.next(time.perf_counter()), Done):
            if isinstance(step, Pause):
                time.sleep(step.seconds)
                continue
            try:
                got = _queue(self.redis.pipeline(transaction=False), step).execute()
            except REDIS_DOWN as e:
                exchange.failed(e, time.perf_counter())
            else:
                exchange.took(step, got, time.perf_counter())
        if step.cancels:
            with contextlib.suppress(*REDIS_DOWN, ResponseError):  # a refused XDEL: the TTL ends it
                _queue(self.redis.pipeline(transaction=False), step).execute()
        return step.results


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
