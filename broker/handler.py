"""What a policy worker needs from a policy: a schema check and batched inference.

`policy_workers` binds a backend to this interface; tests bind small classes. Subclass it and
override what differs from the defaults.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class BatchHandler(ABC):
    """A policy as the worker sees it: `infer` is required, the rest has defaults."""

    inline: bool = False
    """True only when `infer` takes microseconds and never blocks (the null backend): it then runs
    on the worker's event loop, skipping the hop to the inference thread."""

    def validate(self, obs: Any) -> str | None:
        """None if `obs` fits the policy's schema, else a message for the client. Default: any map."""
        return None if isinstance(obs, dict) else "observation must be a map of named arrays"

    def rows(self, obs: Any) -> int:
        """Rollouts in one request (a vectorized simulator sends several); batches count rows."""
        return 1

    @abstractmethod
    def infer(self, batch: list[Any]) -> list[Any]:
        """One action chunk per observation, in order (runs in the inference thread unless `inline`)."""
