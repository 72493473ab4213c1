"""Frames sent through shared memory, loaded onto the GPU straight from the simulators' segments.

At N = 64 REAL_G1 rollouts a batch's frames are 25 MB. Assembling them into one buffer before the
copy to the GPU costs 2-4 ms on the inference thread while the GPU waits. Frames that arrive as
views of the simulators' shared-memory segments (`rolloutq.broker.frames`) are instead left there: each
segment's mapping is registered once with CUDA as page-locked, read-only memory
(`N17RandomPolicy.frames_loadable`), and the captured forward copies each request's frames
straight from it (64 copies: ~0.9 ms on the H100 host; docs/benchmarks.md).
Frames that are not views of a mapping (bytes from Redis) are assembled as usual.
"""

from __future__ import annotations

import mmap
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np


class MappedFrames:
    """Registers the memory maps that frames are views of, once each, through `register(ptr, size)`
    (returns True when the memory is now page-locked) and `unregister(ptr)`, called when the map
    is collected. Frames that are not views of a map (bytes from Redis) are never registered."""

    def __init__(self, register: Callable[[int, int], bool], unregister: Callable[[int], None]) -> None:
        self._register = register
        self._unregister = unregister
        self._done: dict[int, bool] = {}  # id of the map -> registered
        self._lock = threading.Lock()
        self.registered_total = 0
        self.refused_total = 0

    def all_registered(self, arrays: list[np.ndarray]) -> bool:
        """Whether every array is a view of a registered map (registering the new ones)."""
        return all(self._ensure(a) for a in arrays)

    def _ensure(self, a: np.ndarray) -> bool:
        root = mapping_of(a)
        if root is None:
            return False
        key = id(root)
        with self._lock:
            known = self._done.get(key)
            if known is not None:
                return known
            ptr, size = np.frombuffer(root, dtype=np.uint8).ctypes.data, len(root)
            ok = bool(self._register(ptr, size))
            self._done[key] = ok
            if ok:
                self.registered_total += 1
            else:
                self.refused_total += 1
        weakref.finalize(root, self._forget, key, ptr if ok else None)
        return ok

    def _forget(self, key: int, ptr: int | None) -> None:
        with self._lock:
            self._done.pop(key, None)
        if ptr is not None:
            self._unregister(ptr)


def mapping_of(a: np.ndarray) -> Any:
    """The memory map a (read-only) array is a view of, or None."""
    base: Any = a
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None
