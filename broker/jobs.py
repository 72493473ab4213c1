"""What a policy worker holds between reading a request and answering it.

A `Job` is a request admitted for inference; an `Answer` is what the worker writes for one request
entry before acking it (a reply on the rollout's stream, a dead letter, or both). Every part of the
worker (admission, the batch runner, the reply writer, the re-claimer) speaks in these two records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rolloutq.broker.schema import Reply, Request, Status

DEAD_LETTERED = frozenset({Status.DEAD_LETTER, Status.BAD_REQUEST, Status.INFERENCE_FAILED})
"""Statuses whose request is also copied to the dead-letter stream, for the operator."""


@dataclass(slots=True)
class Job:
    """A request admitted for batching: its entry, its decoded observation and where to answer it."""

    entry_id: bytes
    stream: str
    request: Request
    obs: Any
    id_ms: int
    """Redis's time (ms) in the entry id: the request's deadline counts from it."""
    deliveries: int
    decode_s: float
    rows: int
    """Rollouts in the request: a vectorized simulator sends several."""
    reply_to: str
    """The rollout's reply stream, derived from the request stream's shard and the rollout id."""

    def answer(self, status: str, **fields: Any) -> Answer:
        reply = Reply(self.request.seq, status, nonce=self.request.nonce, **fields)
        return Answer(self.stream, self.entry_id, self.reply_to, reply)


@dataclass(slots=True)
class Answer:
    """What is written for one request entry before it is acked: `reply` on `reply_to` (None when
    there is nowhere safe to answer: the entry is only dead-lettered)."""

    stream: str
    entry_id: bytes
    reply_to: str | None
    reply: Reply

    @property
    def dead_letter(self) -> bool:
        return self.reply.status in DEAD_LETTERED or (self.reply_to is None and not self.reply.ok)
