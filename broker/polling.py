"""When the policy worker reads without blocking (`WorkerSettings.poll_ms`, off by default).

In a closed loop every request that reaches a blocked XREADGROUP pays two wake-ups: an idle Redis,
then the worker (about 1 ms together on the H100 host, `docs/benchmarks.md`). A short BLOCK cannot
serve as a timer instead: Redis ends a block's timeout at its next cron tick (up to 100 ms at the
default `hz` 10) unless something else wakes it. So with polling on, the reader

- blocks while nothing is expected: the model is busy, every rollout's request is in, or the
  batcher cannot tell when the next one comes (`MicroBatcher.due_in`);
- is woken with CLIENT UNBLOCK (the consumer's dispatcher sends it to the reader's own connection)
  when a batch has been answered;
- then reads without blocking every `COARSE_S` until `LEAD_S` before the batcher expects the first
  rollout back, and back to back from then until `poll_ms` after the last arrival, so a cohort's
  requests are read as they land; a rollout that does not come back costs `poll_ms` of spinning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LEAD_S = 0.002
"""Polling starts this long before a message is expected: the estimates are taken where it was
decoded (the batcher's) or to the ms (the client's, from entry ids), not when it reached Redis."""
COARSE_S = 0.001
"""Between non-blocking reads before that: a request that comes early waits at most this long."""


class ReadPacer:
    """Decides each read's BLOCK for a polling reader; plain data and a clock, tested directly."""

    def __init__(self, batcher: Any, poll_ms: float, block_ms: int, clock: Callable[[], float]) -> None:
        self.batcher = batcher
        self.poll_s = poll_ms / 1000
        self.block_ms = block_ms
        self.clock = clock
        self.client_id: int | None = None
        """The reader connection's Redis client id, for CLIENT UNBLOCK; None until known."""
        self._since: float | None = None

    def plan(self, model_busy: bool) -> tuple[int | None, float]:
        """(BLOCK in ms for the next read, None for a non-blocking one; seconds to wait after it
        if it comes back empty)."""
        now = self.clock()
        due = None if model_busy else self.batcher.due_in(now)
        if due is None:
            self._since = None
            return self.block_ms, 0.0
        if due > LEAD_S:
            self._since = None
            return None, min(COARSE_S, due - LEAD_S)
        if self._since is None:
            self._since = now
        if now - self._since < self.poll_s:
            return None, 0.0
        return self.block_ms, 0.0

    def arrived(self) -> None:
        """A read returned requests: the next quiet stretch gets its own `poll_ms`."""
        self._since = None
