"""The policy's cost model on rolloutq's side: a policy worker backend whose batch of B
observations takes 20 ms + 1 ms x B (a sleep on the worker's inference thread, as a model on a
GPU of its own), answering a zero 7-D action per observation.

It is the `fixed-cost` backend run off the event loop: `fixed-cost` inherits `runs_inline` from
`null`, which would put the sleep on the worker's event loop and stall its reads. vla-eval's side
runs the same cost in its batching model server (`vla_side.CostModelServer`).
"""

from __future__ import annotations

from typing import Any

from rolloutq.policy_workers.backends.fixed_cost import Backend as FixedCost

BATCH_MS = 20.0
ITEM_MS = 1.0
ACTION_DIM = 7


class CostModelPolicy(FixedCost):
    runs_inline = False

    def __init__(self, batch_ms: float = BATCH_MS, item_ms: float = ITEM_MS, **options: Any) -> None:
        options.setdefault("action_dims", {"action": ACTION_DIM})
        options.setdefault("chunk_length", 1)
        options.setdefault("action_horizon", 1)
        super().__init__(batch_ms=batch_ms, item_ms=item_ms, **options)


NAME = f"{__name__}:CostModelPolicy"
"""The backend name a policy worker builds it from (an import path)."""
