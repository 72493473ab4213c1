"""Micro-batching with Triton's dynamic-batcher semantics.

Requests are grouped by signature (the keys, dtypes and shapes of their observation arrays), since
only observations that stack together can share a forward pass. A group is ready when it holds
`max_batch_size` requests, or when its oldest request has waited `max_wait_s`. Among ready groups
the one with the oldest request goes first; within a group order is arrival order.

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


def signature(obs: Any, prefix: str = "") -> tuple:
    """Hashable description of what must match for two observations to be stacked."""
    out: list[tuple] = []
    _walk(obs, prefix, out)
    return tuple(out)


def _walk(obs: Any, prefix: str, out: list[tuple]) -> None:
    if isinstance(obs, dict):
        for k in sorted(obs):
            _walk(obs[k], f"{prefix}{k}.", out)
    elif isinstance(obs, np.ndarray):
        out.append((prefix, obs.dtype.str, obs.shape))
    elif isinstance(obs, list | str):
        out.append((prefix, "text"))
    else:
        out.append((prefix, type(obs).__name__))


class MicroBatcher(Generic[T]):
    def __init__(self, max_batch_size: int, max_wait_s: float) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._groups: OrderedDict[Hashable, deque[_Pending[T]]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, item: T, key: Hashable, now: float) -> None:
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = deque()
        group.append(_Pending(item, now))
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
            if len(group) >= self.max_batch_size or flush or now - head >= self.max_wait_s - 1e-9:
                if best_age is None or head < best_age:
                    best_key, best_age = key, head
        if best_key is None:
            return None
        group = self._groups[best_key]
        n = min(self.max_batch_size, len(group))
        taken = [group.popleft() for _ in range(n)]
        if not group:
            del self._groups[best_key]
        self._count -= n
        return [p.item for p in taken], [p.arrived for p in taken]

    def drain(self) -> list[T]:
        """Every item still waiting (shutdown)."""
        items = [p.item for g in self._groups.values() for p in g]
        self._groups.clear()
        self._count = 0
        return items
