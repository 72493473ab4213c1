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

from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from rolloutq.broker.batch_cost import BatchCost, ThinkTimes

T = TypeVar("T")


@dataclass
class _Pending(Generic[T]):
    item: T
    arrived: float
    rows: int = 1
    rollout: str | None = None


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


@dataclass
class _Due:
    """A rollout the dispatcher expects back: when (the mean of its think times after its last
    answer), with how many rows, until when it is expected at all, and its think time's jitter."""

    at: float
    rows: int
    drop: float
    sigma: float


_SIGMA_PER_SPREAD = 1.25
"""Standard deviation over mean absolute deviation, for normally distributed think times."""
_QUANTILES = (-1.28, -0.52, 0.0, 0.52, 1.28)
"""Midpoints (in standard deviations) of the five equally likely fifths of a normal distribution."""


def _arrivals(now: float, due: float, sigma: float, drop: float) -> list[float]:
    """Equally likely arrival times of a rollout due at `due` with jitter `sigma`, given that it has
    not arrived by `now`; one when there is no jitter or every likely time has passed."""
    if sigma > 0:
        later = [due + sigma * z for z in _QUANTILES if due + sigma * z > now]
        if later:
            return later
        return [min(drop, now + 0.5 * sigma)]
    return [max(due, now)]


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
        group.append(_Pending(item, now, rows, rollout))
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

    def batch_done(self, rollouts: list[str], now: float, busy_s: float | None = None) -> None:
        """Called by the consumer after each batch (`busy_s`: how long it took); the deadline rule
        needs nothing from it."""

    def retire(self, rollouts: tuple[str, ...] | list[str]) -> None:
        """Called by the consumer for rollouts that ended; the deadline rule keeps no state on them."""

    def drain(self) -> list[T]:
        """Every item still waiting (shutdown)."""
        items = [p.item for g in self._groups.values() for p in g]
        self._groups.clear()
        self._count = 0
        return items


class CohortBatcher(MicroBatcher[T]):
    """Dispatch for closed-loop rollouts: hold a request for batch-mates only when that pays.

    With closed-loop simulators the deadline rule splits rollouts into cohorts that never merge
    (while one cohort's batch runs the other's requests arrive, are overdue when the model frees
    up, and go alone: measured on an H100, N = 8 ran as two batches of 4). Holding for every active
    rollout instead slows slow simulators: a request waits for a rollout whose simulator is still
    mid-step. So when the model is free and requests wait, the batcher compares the two choices
    for the rollouts expected back soon (`ThinkTimes`: each rollout's answer time plus its own
    think time), using the model's batch-time curve (`BatchCost`, fitted to the batches it ran):

    - run now: the waiting rows go at once; the expected ones arrive, and go in a second batch
      once the model is free again — which also delays the waiting rollouts' *next* requests when
      they come back while that second batch runs (the case of fast simulators and a busy model);
    - hold until they are expected, and run all of them in one batch.

    It holds when the second choice costs fewer row-seconds of waiting over these two requests of
    every rollout concerned, for the prefix of expected rollouts (by expected time) that pays best.
    Arrivals are uncertain (simulator steps vary), so the comparison is averaged over five equally
    likely arrival times drawn from the rollout's think-time spread (`_arrivals`), those still ahead;
    a hold lasts until the earliest of them, then the choice is made again.
    A rollout overdue by more than twice its think time's usual spread (at least 1 ms, or a tenth of
    its think time) is no longer expected: its episode ended or its simulator is slow this step.
    A hold never exceeds `max_merge_s`. A batch runs at once when it holds `max_batch_size` rows, so
    one rollout alone, or one whose peers are far from done, is served without waiting.

    Until 8 think times are known, a request waits for the rollouts seen in the last `population_s`
    at most `max_wait_s`. A rollout whose simulator said it ended (`retire`) is expected no more.
    The consumer calls `batch_done` after each batch with how long the batch took.
    """

    def __init__(self, max_batch_size: int, max_wait_s: float, population_s: float = 2.0,
                 max_merge_s: float = 0.25) -> None:
        super().__init__(max_batch_size, max_wait_s)
        self.population_s = population_s
        self.max_merge_s = max_merge_s
        self.thinks = ThinkTimes()
        self.cost = BatchCost()
        self._seen: dict[str, float] = {}  # rollout -> its last request, for the warm-up population
        self._hold_since: float | None = None
        self._hold_until: float | None = None
        self._changed = True  # something arrived since the last decision
        self._pruned_at = 0.0

    def add(self, item: T, key: Hashable, now: float, rollout: str | None = None, rows: int = 1) -> None:
        if rollout is not None:
            self.thinks.arrived(rollout, now, rows)
            self._seen[rollout] = now
        super().add(item, key, now, rollout, rows)
        self._changed = True

    @property
    def warmed_up(self) -> bool:
        return len(self.thinks.recent) >= 8

    def pop_ready(self, now: float, flush: bool = False) -> tuple[list[T], list[float]] | None:
        if not self._groups:
            return None
        if not flush and not any(g.rows >= self.max_batch_size for g in self._groups.values()):
            if self._hold_until is not None and now < self._hold_until and not self._changed:
                return None
            self._changed = False
            until = self._hold(now)
            if until is not None:
                self._hold_until = until
                return None
        self._hold_since = self._hold_until = None
        return super().pop_ready(now, flush=True)

    def next_deadline(self) -> float | None:
        if not self._groups:
            return None
        return self._hold_until if self._hold_until is not None else super().next_deadline()

    def _hold(self, now: float) -> float | None:
        """Until when to hold the waiting requests for batch-mates, or None to run them now."""
        if self._hold_since is None:
            self._hold_since = now
        cap = self._hold_since + (self.max_merge_s if self.warmed_up else self.max_wait_s)
        if now >= cap - 1e-9:
            return None
        until = self._worth_holding(now) if self.warmed_up else self._warm_up_hold(now)
        return None if until is None else min(until, cap)

    def _warm_up_hold(self, now: float) -> float | None:
        for r, t in list(self._seen.items()):
            if now - t > self.population_s:
                del self._seen[r]
        biggest = max(len(g) for g in self._groups.values())
        return None if biggest >= len(self._seen) else float("inf")

    def _worth_holding(self, now: float) -> float | None:
        group = min(self._groups.values(), key=lambda g: g[0].arrived)  # the group that runs next
        k = group.rows
        room = self.max_batch_size - k
        expected = self._expected(now)
        if not expected or room <= 0:
            return None
        waiting = self._waiting_thinks(group)
        c_k = self.cost(k)
        best, best_until = 0.0, None
        m = 0
        sigma = 0.0
        for i, due in enumerate(expected):
            if m + due.rows > room:
                break
            m += due.rows
            sigma = max(sigma, due.sigma)
            whole = i + 1 == len(expected) or m + expected[i + 1].rows > room
            if i & (i + 1) and not whole:  # evaluate prefixes of 1, 2, 4, 8, ... rollouts and the longest
                continue
            arrivals = _arrivals(now, due.at, sigma, due.drop)
            delta = sum(self._hold_minus_run(now, k, m, at, c_k, waiting) for at in arrivals) / len(arrivals)
            if delta < best:
                best = delta
                best_until = arrivals[0] if arrivals[0] > now else min(d.drop for d in expected[: i + 1])
        return best_until

    def _expected(self, now: float) -> list[_Due]:
        """Each answered rollout still expected back (`_Due`), by expected arrival."""
        out = []
        for track in self.thinks.tracks.values():
            if track.served_at is None:
                continue
            think = self.thinks.think_of(track)
            if think is None:
                continue
            due = track.served_at + think
            drop = due + max(0.001, 2 * track.spread, 0.1 * think)
            if now < drop:
                out.append(_Due(due, track.rows, drop, _SIGMA_PER_SPREAD * track.spread))
        out.sort(key=lambda d: d.at)
        return out

    def _waiting_thinks(self, group: _Group) -> tuple[list[float], list[float], list[float]]:
        """Think times of the group's rollouts (sorted), with running sums of rows and rows x think."""
        pairs = []
        for p in group:
            track = self.thinks.tracks.get(p.rollout) if p.rollout is not None else None
            think = self.thinks.think_of(track) if track is not None else None
            if think is not None:
                pairs.append((think, p.rows))
        pairs.sort()
        thinks, rows_sum, weighted_sum = [], [0.0], [0.0]
        for think, rows in pairs:
            thinks.append(think)
            rows_sum.append(rows_sum[-1] + rows)
            weighted_sum.append(weighted_sum[-1] + rows * think)
        return thinks, rows_sum, weighted_sum

    def _hold_minus_run(self, now: float, k: int, m: int, at: float, c_k: float,
                        waiting: tuple[list[float], list[float], list[float]]) -> float:
        """Row-seconds of waiting when holding k waiting rows for m rows expected by `at`, minus those
        when running the k now and the m in a second batch (negative: holding pays)."""
        cost = self.cost
        c_m, c_km = cost(m), cost(k + m)
        second_start = max(at, now + c_k)
        first_requests = k * (at - now + c_km - c_k) + m * (c_km - c_m - (second_start - at))
        # Running now: the waiting rollouts' next requests that come back while the second batch
        # runs wait for it (its end is `gap` after the first batch's).
        gap = second_start + c_m - (now + c_k)
        thinks, rows_sum, weighted_sum = waiting
        j = bisect_left(thinks, gap)
        next_requests = gap * rows_sum[j] - weighted_sum[j]
        return first_requests - next_requests

    def retire(self, rollouts: tuple[str, ...] | list[str]) -> None:
        """Rollouts whose simulator said they ended: no batch waits for them any more."""
        for r in rollouts:
            self.thinks.forget(r)
            self._seen.pop(r, None)
        self._changed = True

    def batch_done(self, rollouts: list[str], now: float, busy_s: float | None = None) -> None:
        """Record when a batch's rollouts were answered (the start of their think time) and how long
        the batch took (`busy_s`)."""
        rows = 0
        for r in rollouts:
            self.thinks.answered(r, now)
            rows += self.thinks.tracks[r].rows
        if busy_s is not None:
            self.cost.record(rows, busy_s)
        self._changed = True
        if now - self._pruned_at > self.population_s:
            self._pruned_at = now
            for r, track in list(self.thinks.tracks.items()):
                if track.served_at is not None and now - track.served_at > self.population_s:
                    del self.thinks.tracks[r]
