"""Micro-batching with Triton's dynamic-batcher semantics.

Requests are grouped by signature (the keys, dtypes and per-row shapes of their observation arrays),
since only observations that stack together can share a forward pass. A request carries one row
(one rollout) or, from a vectorized simulator, several (its arrays' leading dimension); batch sizes
count rows. A group is ready when it holds `max_batch_size` rows, or when its oldest request has
waited `max_wait_s`. Among ready groups the one with the oldest request goes first; within a group
order is arrival order, and a batch never splits a request.

The batcher is plain data (no I/O, no clock of its own), so its semantics are unit-tested directly.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass
class _Pending(Generic[T]):
    item: T
    arrived: float
    rows: int = 1


def signature(obs: Any, prefix: str = "") -> tuple:
    """Hashable description of what must match for two observations to be stacked: keys, dtypes
    and each array's shape past its leading (row) dimension, along which they are stacked."""
    out: list[tuple] = []
    _walk(obs, prefix, out)
    return tuple(out)


def _walk(obs: Any, prefix: str, out: list[tuple]) -> None:
    if isinstance(obs, dict):
        for k in sorted(obs):
            _walk(obs[k], f"{prefix}{k}.", out)
    elif isinstance(obs, np.ndarray):
        out.append((prefix, obs.dtype.str, obs.shape[1:]) if obs.ndim else (prefix, obs.dtype.str, ()))
    elif isinstance(obs, list | str):
        out.append((prefix, "text"))
    else:
        out.append((prefix, type(obs).__name__))


class _Group(deque):
    """One signature's waiting requests, and their rows."""

    rows = 0


class MicroBatcher(Generic[T]):
    def __init__(self, max_batch_size: int, max_wait_s: float) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._groups: OrderedDict[Hashable, _Group] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, item: T, key: Hashable, now: float, rollout: str | None = None, rows: int = 1) -> None:
        """Queue `item` (a request of `rows` rows, at most `max_batch_size`) under signature `key`."""
        if not 1 <= rows <= self.max_batch_size:
            raise ValueError(f"a request of {rows} rows cannot fit batches of at most {self.max_batch_size}")
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
        group.append(_Pending(item, now, rows))
        group.rows += rows
        self._count += 1

    def next_deadline(self) -> float | None:
        """When the oldest waiting request's max-wait runs out (None when empty)."""
        oldest = min((g[0].arrived for g in self._groups.values()), default=None)
        return None if oldest is None else oldest + self.max_wait_s

    def pop_ready(self, now: float, flush: bool = False) -> tuple[list[T], list[float]] | None:
        """The next batch (items, arrival times) if one is ready at `now`; `flush` takes any group."""
        best_key = None
        best_age = None
        for key, group in self._groups.items():
            head = group[0].arrived
            if group.rows >= self.max_batch_size or flush or now - head >= self.max_wait_s - 1e-9:
                if best_age is None or head < best_age:
                    best_key, best_age = key, head
        if best_key is None:
            return None
        group = self._groups[best_key]
        taken = [group.popleft()]
        room = self.max_batch_size - taken[0].rows
        while group and group[0].rows <= room:
            room -= group[0].rows
            taken.append(group.popleft())
        group.rows -= self.max_batch_size - room
        if not group:
            del self._groups[best_key]
        self._count -= len(taken)
        return [p.item for p in taken], [p.arrived for p in taken]

    def batch_done(self, rollouts: list[str], now: float) -> None:
        """Called by the consumer after each batch; the deadline rule needs nothing from it."""

    def due_in(self, now: float) -> float | None:
        """Seconds until the next request is expected (0: a batch is partly in), or None when the
        batcher cannot tell; the deadline rule never can."""
        return None

    def drain(self) -> list[T]:
        """Every item still waiting (shutdown)."""
        items = [p.item for g in self._groups.values() for p in g]
        self._groups.clear()
        self._count = 0
        return items


class CohortBatcher(MicroBatcher[T]):
    """Dispatch for closed-loop rollouts: wait for the rollouts that are about to ask.

    With closed-loop simulators the deadline rule splits rollouts into cohorts that never merge:
    while one cohort's batch runs, the other's requests arrive, are overdue when the model frees
    up, and go alone (measured on an H100: N = 8 ran as two batches of 4). Here a batch is ready
    when it holds every active rollout (distinct rollout ids seen in the last `population_s`; a
    vectorized simulator asks for several rows under one id) or `max_batch_size` rows; so a lone
    rollout is served at once. Otherwise, once the model is free, it waits for the rest at most the
    merge wait: 1.5 x the p90 "think time" (from the end of the batch that served a rollout to that
    rollout's next request), clamped to [5 ms, `max_merge_s`], and `max_wait_s` until 8 think times
    are known. A rollout answered more than 3 p90 think times ago that has not asked again (a
    finished episode, a client that left) no longer counts as active, so the rest is not held back
    for the whole `population_s` window. The consumer calls `batch_done` after each batch.
    """

    def __init__(self, max_batch_size: int, max_wait_s: float, population_s: float = 2.0,
                 max_merge_s: float = 0.25) -> None:
        super().__init__(max_batch_size, max_wait_s)
        self.population_s = population_s
        self.max_merge_s = max_merge_s
        self._last_seen: dict[str, float] = {}
        self._seen_order: deque[tuple[float, str]] = deque()
        self._think: deque[float] = deque(maxlen=256)
        self._think_p10_p90: tuple[float, float] | None = None  # cached: pop_ready runs on every wake-up
        self._served_at: dict[str, float] = {}  # rollout -> end of the batch that answered it
        self._in_batch: list[str] = []
        self._hold_since: float | None = None

    def add(self, item: T, key: Hashable, now: float, rollout: str | None = None, rows: int = 1) -> None:
        if rollout is not None:
            self._last_seen[rollout] = now
            self._seen_order.append((now, rollout))
            served = self._served_at.pop(rollout, None)
            if served is not None:
                self._think.append(max(0.0, now - served))
                self._think_p10_p90 = None
        super().add(item, key, now, rows=rows)

    def population(self, now: float) -> int:
        while self._seen_order and now - self._seen_order[0][0] > self.population_s:
            t, r = self._seen_order.popleft()
            if self._last_seen.get(r) == t:
                del self._last_seen[r]
        n = len(self._last_seen)
        absent = self._absent_after()
        if absent < self.population_s:  # finished episodes stop holding batches long before population_s
            n -= sum(1 for r, t in self._served_at.items() if now - t > absent and r in self._last_seen)
        return max(1, n)

    def merge_wait(self) -> float:
        if len(self._think) < 8:
            return self.max_wait_s
        return min(self.max_merge_s, max(0.005, 1.5 * self._p90_think()))

    def pop_ready(self, now: float, flush: bool = False) -> tuple[list[T], list[float]] | None:
        if not self._groups:
            return None
        target = self.population(now)  # requests, one per rollout; the cap is in rows
        full = any(g.rows >= self.max_batch_size for g in self._groups.values())
        biggest = max(len(g) for g in self._groups.values())
        if not flush and not full and biggest < target:
            if self._hold_since is None:
                self._hold_since = now
            if now - self._hold_since < self.merge_wait():
                return None
        self._hold_since = None
        return super().pop_ready(now, flush=True)

    def _absent_after(self) -> float:
        """How long after its answer a rollout that has not asked again stops counting as active:
        3 x the p90 think time, within [20 ms, `population_s`] (`population_s` until 8 think times are known)."""
        if len(self._think) < 8:
            return self.population_s
        return min(self.population_s, max(0.02, 3 * self._p90_think()))

    def _p90_think(self) -> float:
        return self._think_quantiles()[1]

    def _think_quantiles(self) -> tuple[float, float]:
        if self._think_p10_p90 is None:
            s = sorted(self._think)
            self._think_p10_p90 = (s[int(0.1 * len(s))], s[min(len(s) - 1, int(0.9 * len(s)))])
        return self._think_p10_p90

    def due_in(self, now: float) -> float | None:
        """0 while a batch is partly in; else the time until the first active rollout that was
        answered is expected back (its answer plus the p10 think time); None before 8 think times
        are known or when no answered rollout is still active (all have asked, or left)."""
        if len(self._think) < 8:
            return None
        if self._groups:
            return 0.0
        absent = self._absent_after()
        first = min((t for t in self._served_at.values() if now - t <= absent), default=None)
        return None if first is None else max(0.0, first + self._think_quantiles()[0] - now)

    def next_deadline(self) -> float | None:
        if not self._groups:
            return None
        if self._hold_since is not None:
            return self._hold_since + self.merge_wait()
        return super().next_deadline()

    def retire(self, rollouts: tuple[str, ...] | list[str]) -> None:
        """Rollouts whose simulator said they ended: no batch waits for them any more."""
        for r in rollouts:
            self._last_seen.pop(r, None)
            self._served_at.pop(r, None)

    def batch_done(self, rollouts: list[str], now: float) -> None:
        """Record when a batch's rollouts were answered (the start of their think time)."""
        for r in rollouts:
            self._served_at[r] = now
        if len(self._served_at) > 4 * max(64, self.max_batch_size):
            for r in list(self._served_at)[: len(self._served_at) // 2]:
                del self._served_at[r]
