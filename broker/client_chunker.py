"""Client-side action chunking: a policy answers a chunk of steps, the simulator executes a few.

The reference design executes `action_horizon` = 8 of each 40-step chunk, then queries the policy
again with a fresh observation; `ActionChunker` keeps that count so the simulator loop stays flat.
"""

from __future__ import annotations

from typing import Any


class ActionChunker:
    """Client-side action chunking: query the policy only when the current chunk is used up."""

    def __init__(self, action_horizon: int = 8) -> None:
        if action_horizon < 1:
            raise ValueError("action_horizon must be >= 1")
        self.action_horizon = action_horizon
        self._chunk: dict[str, Any] | None = None
        self._t = 0
        self._usable = 0

    def needs_query(self) -> bool:
        return self._chunk is None or self._t >= self._usable

    def set_chunk(self, chunk: dict[str, Any]) -> None:
        lengths = {v.shape[1] for v in chunk.values() if hasattr(v, "shape") and v.ndim >= 2}
        length = min(lengths) if lengths else self.action_horizon
        self._chunk = chunk
        self._t = 0
        self._usable = min(self.action_horizon, length)

    def next(self) -> tuple[dict[str, Any], int]:
        """The current chunk and the step index to execute; advances by one step."""
        if self.needs_query():
            raise RuntimeError("chunk used up: query the policy and call set_chunk first")
        t = self._t
        self._t += 1
        return self._chunk, t  # type: ignore[return-value]

    def reset(self) -> None:
        self._chunk = None
        self._t = 0
