"""`null` backend: returns a fixed action chunk without looking at the observation.

For measuring the broker's own overhead (codec, Redis, batching) with no model in the way. It
accepts any observation. It runs on the worker's event loop (`runs_inline`), so the figures it gives
leave out the hop to the inference thread that a real model's batch pays once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rolloutq.policy_workers.base import Chunk, Obs, PolicyBackend, PolicyMetadata


class Backend(PolicyBackend):
    runs_inline = True  # a dict lookup per observation: the thread hop would cost more than the call

    def __init__(self, action_dims: dict[str, int] | None = None, chunk_length: int = 40,
                 action_horizon: int = 8, **_: Any) -> None:
        self.action_dims = action_dims or {"action": 7}
        self.chunk_length = chunk_length
        self.action_horizon = action_horizon
        self._chunk: Chunk = {}

    def load(self) -> None:
        self._chunk = {k: np.zeros((1, self.chunk_length, d), np.float32) for k, d in self.action_dims.items()}

    def metadata(self) -> PolicyMetadata:
        return PolicyMetadata(
            model_id="null",
            observation_schema={},
            action_schema={k: {"dtype": "float32", "shape": [1, self.chunk_length, d]}
                           for k, d in self.action_dims.items()},
            chunk_length=self.chunk_length,
            action_horizon=self.action_horizon,
            description="fixed zero chunk; measures broker overhead only, not a policy",
            extra={"accepts_any_observation": True},
        )

    def infer(self, batch: list[Obs]) -> list[Chunk]:
        return [self._chunk for _ in batch]
