"""The client's request, resend, deadline and cancel rules (docs/PROTOCOL.md §3.1, §7), without I/O.

An `Exchange` holds the calls of one `act_many` (a single call for `act`). Asked with the time,
it says what to do next: find where fresh rollouts' reply streams end (`Lookup`), send and read
(`SendAndRead`: the XADDs, then one XREAD BLOCK over the reply streams, in one pipeline), wait
(`Pause`), or stop (`Done`: every call's result, and the sends of abandoned calls to delete).
The driver runs that step against Redis and hands back what Redis returned (`took`) or that it
could not be reached (`failed`). Nothing here touches Redis, sleeps or reads a clock, so the async
and the sync client (`rolloutq.broker.client`) share these rules and a test can walk through them alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from rolloutq.broker.codec import first_non_finite
from rolloutq.broker.errors import BrokerError, PolicyErrorReply, PolicyTimeout, ProtocolError, RedisUnavailable
from rolloutq.broker.schema import RETRYABLE, Reply, Request, Status
from rolloutq.broker.settings import ClientSettings

MAX_BLOCK_S = 2.0
"""One blocking XREAD never outlasts this (well under RedisSettings.socket_timeout_s), so a read timeout
means Redis is gone, never that no reply came yet."""


def backoff(base_s: float, attempt: int, rand: Callable[[], float] = random.random) -> float:
    """The wait before retry `attempt`: `base_s` doubled per attempt (at most 2^6 times), with jitter."""
    return base_s * (2 ** min(attempt, 6)) * (0.5 + rand())


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
class RolloutCursor:
    """Where one rollout stands: the `seq` of its next request and how far its reply stream was read."""

    seq: int = 0
    last_id: bytes | None = None
    """Reply-stream position; None until the first request, which starts after the entries already
    there (a reused rollout id must never pick up the replies of an earlier run)."""


@dataclass(eq=False)
class Call:
    """One request on its way to an answer: what a resend repeats, the entry ids of its sends (to
    cancel them), when it sends next or stops waiting, and its outcome once it has one."""

    request: Request
    cursor: RolloutCursor
    stream: str
    reply_key: str
    started: float
    deadline: float
    send_at: float | None
    """When the next send is due; None while the call waits for the reply to its last send."""
    wait_until: float = 0.0
    """When the reply timeout of the last send runs out."""
    sent_ids: list[bytes] = field(default_factory=list)
    outcome: ActResult | BrokerError | None = None

    @classmethod
    def begin(cls, cursor: RolloutCursor, rollout: str, obs: bytes, steps: int, stream: str, reply_key: str,
              now: float, deadline_s: float) -> Call:
        """A call for the rollout's next `seq` with a fresh nonce, due to be sent now. The cursor
        moves on to the next `seq` at once: a rollout's seq advances once per call, whatever its
        outcome."""
        request = Request(rollout=rollout, seq=cursor.seq, obs=obs, ttl_ms=int(deadline_s * 1000), steps=steps)
        cursor.seq += 1
        return cls(request, cursor, stream, reply_key, started=now, deadline=now + deadline_s, send_at=now)

    @property
    def sends(self) -> int:
        return len(self.sent_ids)

    def due(self, now: float) -> bool:
        return self.send_at is not None and self.send_at <= now

    def wakes_at(self) -> float:
        """When this call (not due now) next needs attention: its next send, its reply timeout or its deadline."""
        return min(self.deadline, self.wait_until if self.send_at is None else self.send_at)

    def fields(self, now: float) -> dict[str, Any]:
        """The next send's fields: the first send with the whole deadline; a resend numbered, with
        the first send's entry id and only what is left of the deadline (so no worker infers it
        after the caller gave up)."""
        if not self.sent_ids:
            return self.request.to_fields()
        first = self.sent_ids[0]
        return replace(self.request, resend=self.sends, orig=first.decode() if isinstance(first, bytes) else str(first),
                       ttl_ms=max(1, int((self.deadline - now) * 1000))).to_fields()

    def match(self, entries: Iterable[tuple[bytes, dict]]) -> Reply | None:
        """The reply to this call among reply-stream entries, if any: the first that echoes its nonce
        (with its seq, or -1). Entries before it are skipped and the cursor moves past them."""
        for entry_id, fields in entries:
            self.cursor.last_id = entry_id
            try:
                reply = Reply.from_fields(fields)
            except ProtocolError:
                continue
            if reply.nonce == self.request.nonce and reply.seq in (self.request.seq, -1):
                return reply
        return None


@dataclass(frozen=True)
class Lookup:
    """Read the last entry id of each reply stream (XREVRANGE key + - COUNT 1), for calls of rollouts
    that have not sent yet; `took` gets one result per key, in order."""

    calls: list[Call]

    @property
    def reply_keys(self) -> list[str]:
        return [c.reply_key for c in self.calls]


@dataclass(frozen=True)
class Send:
    stream: str
    fields: dict[str, Any]
    call: Call


@dataclass(frozen=True)
class SendAndRead:
    """XADD each send to its stream, then XREAD BLOCK `block_ms` over `reads` (reply key -> last id
    seen), in one pipeline; `took` gets the entry ids of the sends followed by the XREAD's result."""

    sends: list[Send]
    reads: dict[str, bytes]
    block_ms: int
    at: float


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Cancel:
    stream: str
    entry_ids: list[bytes]


@dataclass(frozen=True)
class Done:
    """Every call's outcome, in the order of the calls; and the sends of the calls given up on, to
    delete (XDEL, errors ignored: a worker never reads a deleted entry, and a refused XDEL leaves it
    to the request's TTL)."""

    results: list[ActResult | BrokerError]
    cancels: list[Cancel]


Step = Lookup | SendAndRead | Pause | Done


class Exchange:
    """Takes the calls of one `act_many` to their outcomes; see the module docstring."""

    def __init__(self, calls: list[Call], settings: ClientSettings, policy: str, decode: Callable[[bytes], Any],
                 rand: Callable[[], float] = random.random) -> None:
        self.calls = calls
        self.settings = settings
        self.policy = policy
        self.decode = decode
        self.rand = rand
        self.errors = 0
        """Redis errors so far: each one pauses the exchange for a longer backoff."""
        self._by_key = {c.reply_key.encode(): c for c in calls}
        self._paused_until = 0.0
        self._given_up: list[Call] = []

    def next(self, now: float) -> Step:
        """What to do at time `now` (seconds, any monotonic clock)."""
        pending = self._settle(now)
        if not pending:
            return Done([c.outcome for c in self.calls],  # type: ignore[misc]
                        [Cancel(c.stream, list(c.sent_ids)) for c in self._given_up])
        if now < self._paused_until:
            return Pause(self._paused_until - now)
        due = [c for c in pending if c.due(now)]
        fresh = [c for c in due if c.cursor.last_id is None]
        if fresh:
            return Lookup(fresh)
        return self._send_and_read(pending, due, now)

    def took(self, step: Step, results: list[Any], now: float) -> None:
        """What Redis returned for `step`, received at `now`."""
        if isinstance(step, Lookup):
            for call, last in zip(step.calls, results, strict=True):
                call.cursor.last_id = last[0][0] if last else b"0-0"
        elif isinstance(step, SendAndRead):
            *entry_ids, got = results
            for send, entry_id in zip(step.sends, entry_ids, strict=True):
                send.call.sent_ids.append(entry_id)
                send.call.send_at = None
                send.call.wait_until = min(send.call.deadline, step.at + self.settings.reply_timeout_s)
            for key, entries in _streams(got):
                call = self._by_key.get(key if isinstance(key, bytes) else str(key).encode())
                if call is not None and call.outcome is None:
                    self._answered(call, call.match(entries), now)

    def failed(self, error: BaseException, now: float) -> None:
        """Redis could not be reached for the last step: pause for a backoff, then send every call
        again (its request may have been lost), or give up on those the pause would take past the
        deadline."""
        self.errors += 1
        pause = backoff(self.settings.backoff_s, self.errors, self.rand)
        self._paused_until = now + pause
        for call in self._pending():
            if now + pause >= call.deadline:
                self._give_up(call, RedisUnavailable(f"Redis unreachable while waiting for a reply: {error}"))
            else:
                call.send_at = now + pause if call.send_at is None else max(call.send_at, now + pause)

    def _send_and_read(self, pending: list[Call], due: list[Call], now: float) -> SendAndRead | Pause:
        """Send the due calls, and read every reply stream whose position is known until the next
        call needs attention (its reply timeout, a backoff's end or its deadline)."""
        reads = {c.reply_key: c.cursor.last_id for c in pending if c.cursor.last_id is not None}
        if not reads:  # only calls that could not look up yet, waiting out a Redis error
            return Pause(min(c.wakes_at() for c in pending) - now)
        reply_by = now + self.settings.reply_timeout_s
        wake = min(min(c.deadline, reply_by) if c.due(now) else c.wakes_at() for c in pending)
        return SendAndRead([Send(c.stream, c.fields(now), c) for c in due], reads,  # type: ignore[arg-type]
                           max(1, int(min(wake - now, MAX_BLOCK_S) * 1000)), at=now)

    def _answered(self, call: Call, reply: Reply | None, now: float) -> None:
        if reply is None:
            return
        if reply.status in RETRYABLE and call.sends <= self.settings.max_resends:
            call.send_at = now + backoff(self.settings.backoff_s, call.sends, self.rand)
        else:
            call.outcome = self._result(call, reply, now)

    def _result(self, call: Call, reply: Reply, now: float) -> ActResult | BrokerError:
        if not reply.ok:
            return PolicyErrorReply(reply.status, reply.error)
        try:
            chunk = self.decode(reply.action)
        except BrokerError as e:
            return e
        if self.settings.check_finite and (key := first_non_finite(chunk)) is not None:
            return PolicyErrorReply(Status.BAD_ACTION, f"the policy's action {key!r} holds NaN or infinity")
        return ActResult(chunk=chunk, seq=reply.seq, round_trip_ms=(now - call.started) * 1000,
                         queue_ms=reply.queue_ms, infer_ms=reply.infer_ms, batch=reply.batch, worker=reply.worker,
                         sends=call.sends)

    def _settle(self, now: float) -> list[Call]:
        """Give up on the calls past their deadline or out of resends, mark those whose reply timed
        out as due to resend; the calls still pending."""
        pending = []
        for call in self._pending():
            if call.send_at is None and now >= call.wait_until:
                call.send_at = now
            if now >= call.deadline:
                self._give_up(call, RedisUnavailable("Redis unreachable: no request could be sent before the deadline")
                              if self.errors and not call.sends else self._timeout(call))
            elif call.due(now) and call.sends > self.settings.max_resends:
                self._give_up(call, self._timeout(call))
            else:
                pending.append(call)
        return pending

    def _pending(self) -> list[Call]:
        return [c for c in self.calls if c.outcome is None]

    def _give_up(self, call: Call, error: BrokerError) -> None:
        call.outcome = error
        if call.sent_ids:
            self._given_up.append(call)

    def _timeout(self, call: Call) -> PolicyTimeout:
        return PolicyTimeout(
            f"no reply from policy {self.policy!r} for rollout {call.request.rollout!r} step {call.request.seq} "
            f"within {self.settings.deadline_s:.0f}s ({call.sends} sends): are policy workers running and "
            "connected to the same Redis and namespace?"
        )


def _streams(got: Any) -> Iterable[tuple[Any, list]]:
    """An XREAD's result as (key, entries) pairs: None when nothing came; a dict under RESP3."""
    if not got:
        return ()
    return got.items() if isinstance(got, dict) else got
