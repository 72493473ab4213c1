"""What the dispatcher knows about the model and the simulators, learned from what it observes.

The cohort batcher decides whether holding a request for batch-mates pays. That needs two curves:
how long the model takes for a batch of n rows (`BatchCost`: a fixed cost per forward pass plus a
cost per row, fitted to the batches the worker ran), and when each rollout is expected back after
its answer (`ThinkTimes`: per rollout, the mean and spread of the time from the end of the batch
that answered it to its next request — its simulator's step plus the trip both ways). Both are
plain data fed by the batcher; nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

_ALPHA = 0.25
"""Weight of the newest sample in the running means: about the last 4–8 samples count."""


class BatchCost:
    """The model's time for a batch of n rows: `fixed + per_row * n`, least squares over the mean
    time of each batch size seen (each size weighted by how often it ran, up to 16). With one size
    seen, the time is taken as all fixed (so merging looks free, as it is for a model that is far
    from its throughput limit); before any batch, every batch costs 0."""

    def __init__(self) -> None:
        self._mean: dict[int, float] = {}
        self._count: dict[int, int] = {}
        self._fit: tuple[float, float] | None = None

    def record(self, rows: int, seconds: float) -> None:
        if rows < 1 or seconds < 0:
            return
        old = self._mean.get(rows)
        self._mean[rows] = seconds if old is None else old + _ALPHA * (seconds - old)
        self._count[rows] = min(16, self._count.get(rows, 0) + 1)
        self._fit = None

    @property
    def known(self) -> bool:
        return bool(self._mean)

    def fixed_and_per_row(self) -> tuple[float, float]:
        if self._fit is None:
            self._fit = self._least_squares()
        return self._fit

    def __call__(self, rows: int) -> float:
        if rows <= 0:
            return 0.0
        fixed, per_row = self.fixed_and_per_row()
        return fixed + per_row * rows

    def _least_squares(self) -> tuple[float, float]:
        if not self._mean:
            return 0.0, 0.0
        if len(self._mean) == 1:
            return next(iter(self._mean.values())), 0.0
        w = sum(self._count.values())
        mx = sum(self._count[n] * n for n in self._mean) / w
        my = sum(self._count[n] * t for n, t in self._mean.items()) / w
        sxx = sum(self._count[n] * (n - mx) ** 2 for n in self._mean)
        sxy = sum(self._count[n] * (n - mx) * (t - my) for n, t in self._mean.items())
        per_row = max(0.0, sxy / sxx) if sxx > 0 else 0.0
        fixed = my - per_row * mx
        if fixed < 0:  # a curve through the origin: batching gains nothing
            return 0.0, my / mx
        return fixed, per_row


@dataclass
class RolloutTrack:
    """One rollout as the dispatcher sees it."""

    rows: int = 1
    served_at: float | None = None
    """End of the batch that answered its last request; None while its request waits or runs."""
    think: float | None = None
    """Running mean of its think times (seconds)."""
    spread: float = 0.0
    """Running mean of the absolute deviation of its think times from `think`."""


class ThinkTimes:
    """Think times: per rollout (`RolloutTrack`) and across rollouts (the last 256)."""

    def __init__(self) -> None:
        self.tracks: dict[str, RolloutTrack] = {}
        self.recent: deque[float] = deque(maxlen=256)
        self._median: float | None = None

    def arrived(self, rollout: str, now: float, rows: int) -> None:
        """`rollout` sent a request at `now`."""
        track = self.tracks.get(rollout)
        if track is None:
            track = self.tracks[rollout] = RolloutTrack()
        track.rows = rows
        if track.served_at is not None:
            think = max(0.0, now - track.served_at)
            if track.think is None:
                track.think = think
            else:
                track.spread += _ALPHA * (abs(think - track.think) - track.spread)
                track.think += _ALPHA * (think - track.think)
            self.recent.append(think)
            self._median = None
        track.served_at = None

    def answered(self, rollout: str, now: float) -> None:
        track = self.tracks.get(rollout)
        if track is None:
            track = self.tracks[rollout] = RolloutTrack()
        track.served_at = now

    def forget(self, rollout: str) -> None:
        self.tracks.pop(rollout, None)

    def median(self) -> float | None:
        """The median of recent think times (all rollouts), once 3 are known."""
        if len(self.recent) < 3:
            return None
        if self._median is None:
            self._median = sorted(self.recent)[len(self.recent) // 2]
        return self._median

    def think_of(self, track: RolloutTrack) -> float | None:
        """A rollout's expected think time: its own, or the recent median for a rollout not yet seen twice."""
        return track.think if track.think is not None else self.median()
