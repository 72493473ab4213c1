"""What a policy worker counts and reports: its stats snapshot (for `rolloutq top`, the exporter
and the controller, through the worker-stats hash) and the metrics hooks the consumer calls.

Kept apart from `rolloutq.broker.consumer` so that readers of the numbers need not read the serving loop.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol


class ConsumerMetrics(Protocol):
    """What the consumer reports per batch and per reply (`rolloutq.monitoring.metrics_worker.WorkerMetrics`)."""

    def on_batch(self, size: int, queue_s: list[float], infer_s: float, decode_s: float, encode_s: float) -> None: ...

    def on_reply(self, status: str) -> None: ...


class NoMetrics:
    """Metrics hooks that record nothing (no exporter configured)."""

    def on_batch(self, size: int, queue_s: list[float], infer_s: float, decode_s: float, encode_s: float) -> None:
        pass

    def on_reply(self, status: str) -> None:
        pass


_PCTS = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


@dataclass
class WorkerStats:
    """Counters a worker keeps; `snapshot()` is what /stats and the stats hash show."""

    worker: str
    started: float = field(default_factory=time.time)
    requests_total: int = 0
    replies_ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    batches_total: int = 0
    batched_items_total: int = 0
    busy_s_total: float = 0.0
    decode_s_total: float = 0.0
    encode_s_total: float = 0.0
    dead_letters_total: int = 0
    reclaimed_total: int = 0
    duplicates_total: int = 0
    """Resends dropped because their original was still queued, held or already answered."""
    recovered_total: int = 0
    """Entries this worker had read but lost track of (a read whose answer was lost) and took up again."""
    consumers_forgotten_total: int = 0
    infer_ms: deque = field(default_factory=lambda: deque(maxlen=2048))
    queue_ms: deque = field(default_factory=lambda: deque(maxlen=2048))
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=2048))

    def snapshot(self) -> dict[str, Any]:
        def pct(values: deque, q: float) -> float | None:
            if not values:
                return None
            s = sorted(values)
            return round(s[min(len(s) - 1, int(q * len(s)))], 3)

        return {
            "worker": self.worker,
            "ts": time.time(),
            "uptime_s": round(time.time() - self.started, 3),
            "requests_total": self.requests_total,
            "served_total": self.batched_items_total,
            "replies_ok_total": self.replies_ok,
            "errors_total": dict(self.errors),
            "batches_total": self.batches_total,
            "mean_batch_size": round(self.batched_items_total / self.batches_total, 3) if self.batches_total else 0.0,
            "busy_s_total": round(self.busy_s_total, 4),
            "decode_s_total": round(self.decode_s_total, 4),
            "encode_s_total": round(self.encode_s_total, 4),
            "dead_letters_total": self.dead_letters_total,
            "reclaimed_total": self.reclaimed_total,
            "duplicates_total": self.duplicates_total,
            "recovered_total": self.recovered_total,
            "consumers_forgotten_total": self.consumers_forgotten_total,
            "infer_ms": {q: pct(self.infer_ms, f) for q, f in _PCTS},
            "queue_ms": {q: pct(self.queue_ms, f) for q, f in _PCTS},
            "recent_mean_batch_size": round(sum(self.batch_sizes) / max(1, len(self.batch_sizes)), 3),
        }


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"
