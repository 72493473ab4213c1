"""`fixed-cost` backend: the `null` chunk after sleeping a known time per batch.

A policy whose batched service rate is known exactly, for testing and benchmarking the autoscaler
on CPU machines: one batch of B observations takes `batch_ms + item_ms × B`, so one replica serves
μ(B) = B / (batch_ms + item_ms × B) observations per second. It sleeps instead of computing, so
many replicas fit on a small machine without competing for cores (the model of a GPU replica that
is busy on its own device).
"""

from __future__ import annotations

import time
from typing import Any

from rolloutq.policy_workers.backends.null import Backend as NullBackend
from rolloutq.policy_workers.base import Chunk, Obs, PolicyMetadata


class Backend(NullBackend):
    runs_inline = False  # it sleeps: on the inference thread, like a model, never on the worker's event loop

    def __init__(self, batch_ms: float = 40.0, item_ms: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        self.batch_ms = float(batch_ms)
        self.item_ms = float(item_ms)

    def metadata(self) -> PolicyMetadata:
        meta = super().metadata()
        meta.model_id = f"fixed-cost-{self.batch_ms:g}ms+{self.item_ms:g}ms"
        meta.description = "null chunk after a fixed sleep per batch (known service rate)"
        return meta

    def infer(self, batch: list[Obs]) -> list[Chunk]:
        time.sleep((self.batch_ms + self.item_ms * len(batch)) / 1000.0)
        return super().infer(batch)
