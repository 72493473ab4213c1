"""PROTOTYPE of a proposed core change, used only by gpu_bench.py's `:cohort` C runs.

Problem seen on the H100 (docs/benchmarks.md): with closed-loop rollouts, a Triton-style batcher
(dispatch at max_batch_size or when the oldest request waited max_wait_ms) splits the rollouts
into cohorts that never merge again. While cohort 1's batch runs, cohort 2's requests arrive and
wait; when the GPU frees up they are overdue, so they go alone; cohort 1 comes back during that
forward pass, and so on. N = 8 ran as two batches of 4 per cycle (2x the GPU time of one batch of
8); N = 64 alternated a large and a small batch.

Rule here: the batcher knows the active population P (distinct rollouts that sent a request in the
last `population_s`). A group is ready when it holds min(P, max_batch_size) requests: so one
rollout is served at once, without max_wait; otherwise, once the worker is free, it waits for the
rest of the population (typically the cohort stepping its simulator right now) before dispatching
what it has, at most the merge wait: 1.5 x the p90 of the measured "think time" (from the end of
the batch that served a rollout to that rollout's next request: reply transit + simulator steps),
clamped to [5 ms, max_merge_ms]; `merge_wait_ms` until 8 samples exist. Not the core's code: the
lead decides what goes into broker/batcher.py.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from broker.batcher import MicroBatcher


class CohortBatcher(MicroBatcher):
    def __init__(
        self,
        max_batch_size: int,
        max_wait_s: float,
        merge_wait_s: float = 0.03,
        population_s: float = 2.0,
        max_merge_s: float = 0.25,
    ) -> None:
        super().__init__(max_batch_size, max_wait_s)
        self.merge_wait_s = merge_wait_s
        self.max_merge_s = max_merge_s
        self.population_s = population_s
        self._seen: dict[str, float] = {}
        self._order: deque[tuple[float, str]] = deque()
        self._hold_start: float | None = None
        self._think: deque[float] = deque(maxlen=256)
        self._batch_no = 0
        self._batch_of: dict[str, int] = {}
        self._batch_end: dict[int, float] = {}
        self._running: int | None = None

    def merge_wait(self) -> float:
        if len(self._think) < 8:
            return self.merge_wait_s
        s = sorted(self._think)
        p90 = s[min(len(s) - 1, int(0.9 * len(s)))]
        return min(self.max_merge_s, max(0.005, 1.5 * p90))

    def _dispatch(self, now: float, batch):
        self._hold_start = None
        if batch is not None:
            self._batch_no += 1
            self._running = self._batch_no
            for item in batch[0]:
                r = getattr(getattr(item, "request", None), "rollout", None)
                if r is not None:
                    self._batch_of[r] = self._batch_no
        return batch

    def _population(self, now: float) -> int:
        while self._order and now - self._order[0][0] > self.population_s:
            t, r = self._order.popleft()
            if self._seen.get(r) == t:
                del self._seen[r]
        return max(1, len(self._seen))

    def add(self, item: Any, key: Any, now: float) -> None:
        rollout = getattr(getattr(item, "request", None), "rollout", None)
        if rollout is not None:
            self._seen[rollout] = now
            self._order.append((now, rollout))
            k = self._batch_of.pop(rollout, None)
            if k is not None and k in self._batch_end:
                self._think.append(now - self._batch_end[k])
        super().add(item, key, now)

    def pop_ready(self, now: float, flush: bool = False):
        if self._running is not None:  # the dispatcher asks again only once the last batch is done
            self._batch_end[self._running] = now
            self._batch_end.pop(self._running - 16, None)
            self._running = None
        if flush or not self._groups:
            return self._dispatch(now, super().pop_ready(now, flush))
        target = min(self._population(now), self.max_batch_size)
        biggest = max(len(g) for g in self._groups.values())
        if biggest >= target:
            return self._dispatch(now, super().pop_ready(now, flush=True))
        if self._hold_start is None:
            self._hold_start = now
        if now - self._hold_start >= self.merge_wait():
            return self._dispatch(now, super().pop_ready(now, flush=True))
        return None

    def next_deadline(self) -> float | None:
        if not self._groups:
            return None
        if self._hold_start is not None:
            return self._hold_start + self.merge_wait()
        return super().next_deadline()


def install(merge_wait_ms: float = 30.0, population_s: float = 2.0) -> None:
    """Make broker.consumer build CohortBatchers (call before the worker starts)."""
    import broker.consumer as consumer

    class _Configured(CohortBatcher):
        def __init__(self, max_batch_size: int, max_wait_s: float) -> None:
            super().__init__(max_batch_size, max_wait_s, merge_wait_ms / 1000, population_s)

    consumer.MicroBatcher = _Configured
