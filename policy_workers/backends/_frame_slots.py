"""Page-locked slots that hold each request's frames from the moment it is read until its batch runs.

At N = 64 REAL_G1 rollouts a batch's frames are 25 MB. Assembling them into one buffer after the
batch is complete (the default) costs ~3-4 ms on the inference thread while the GPU waits. With
staging on (`Gr00tSettings.stage_requests`), the consumer hands each request to the backend as it
is read (`Backend.stage`, on the inference thread, while the event loop decodes the next ones)
and its frames are copied into a slot of this pool; when the batch runs, the captured forward
loads the slots straight into its input buffer by DMA, one copy per run of adjacent slots, and no
CPU copy is left on the critical path.

A slot is taken in ring order (so a batch's slots are mostly adjacent), given back when its batch
has run (`Pinned.release`) or when the staged request is dropped unanswered (the `Pinned` object
is garbage collected: a finalizer gives it back). When every slot is taken, `take` returns None and
the request keeps its own frames, which the batch then copies as usual: staging can run out, never
fail. Pure numpy plus an allocator: the pool is page-locked CUDA host memory when the policy runs on
a GPU (`N17RandomPolicy.pin_frames_many`), ordinary memory otherwise (CPU tests).

`MappedFrames` is the other way to the same end, and the default: frames that arrive as views of
the simulators' shared-memory segments (`broker.frames`) are left there, each segment's mapping
is registered once with CUDA as page-locked, read-only memory, and the captured forward copies
each request's frames straight from it (64 copies: ~0.9 ms on the H100 host, against 2-4 ms for
assembling the batch in one buffer first; `benchmarks/probe_host_register.py`).
"""

from __future__ import annotations

import mmap
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


class Pinned:
    """One request's frames in a slot: `array` (a view of the pool), given back by `release()`."""

    __slots__ = ("array", "pool", "index", "_release", "__weakref__")

    def __init__(self, array: np.ndarray, pool: FrameSlots, index: int) -> None:
        self.array = array
        self.pool = pool
        self.index = index
        self._release = weakref.finalize(self, pool._give_back, index)

    def release(self) -> None:
        self._release()  # a finalizer runs at most once: releasing twice, or after collection, is harmless


class FrameSlots:
    """A ring of `slots` equal-shaped frame arrays in one allocation (`alloc(shape, dtype)`)."""

    def __init__(self, frame_shape: tuple[int, ...], dtype: Any, slots: int,
                 alloc: Callable[[tuple[int, ...], Any], np.ndarray] | None = None) -> None:
        if slots < 1:
            raise ValueError("a frame pool needs at least one slot")
        self.frame_shape = tuple(frame_shape)
        self.dtype = np.dtype(dtype)
        self.slots = slots
        self.array = (alloc or _numpy_alloc)((slots, *self.frame_shape), self.dtype)
        self._free = bytearray(b"\x01") * slots
        self._next = 0
        self._lock = threading.Lock()
        self.taken_total = 0
        self.exhausted_total = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pool_threads = 0

    def take(self, frames: np.ndarray) -> Pinned | None:
        """Copy one request's frames (1, *frame_shape) into the next free slot; None if none is free."""
        return self.take_many([frames])[0]

    def take_many(self, frames: list[np.ndarray], threads: int = 1) -> list[Pinned | None]:
        """`take` for several requests (one read's), copied by up to `threads` threads at once."""
        for f in frames:
            if f.shape[1:] != self.frame_shape or f.shape[0] != 1 or f.dtype != self.dtype:
                raise ValueError(f"frames {f.shape} {f.dtype} do not fit slots of {self.frame_shape} {self.dtype}")
        with self._lock:
            indices = [self._reserve() for _ in frames]
        pins = [None if i is None else Pinned(self.array[i : i + 1], self, i) for i in indices]
        jobs = [(p.array, f) for p, f in zip(pins, frames, strict=True) if p is not None]
        threads = max(1, min(threads, len(jobs)))
        if threads == 1:
            for dst, src in jobs:
                np.copyto(dst, src)  # releases the GIL: the event loop keeps decoding meanwhile
        else:
            if self._pool is None or self._pool_threads < threads:
                self._pool = ThreadPoolExecutor(threads, thread_name_prefix="rolloutq-frame-slots")
                self._pool_threads = threads
            list(self._pool.map(lambda g: [np.copyto(d, s) for d, s in jobs[g::threads]], range(threads)))
        return pins

    def _reserve(self) -> int | None:
        i = self._free.find(b"\x01", self._next)
        if i < 0:
            i = self._free.find(b"\x01", 0, self._next)
        if i < 0:
            self.exhausted_total += 1
            return None
        self._free[i] = 0
        self._next = (i + 1) % self.slots
        self.taken_total += 1
        return i

    def _give_back(self, index: int) -> None:
        with self._lock:
            self._free[index] = 1

    def in_use(self) -> int:
        with self._lock:
            return self.slots - sum(self._free)


def runs(pins: list[Pinned]) -> list[tuple[np.ndarray, int, int]] | None:
    """(pool array, first slot, slot count) for each run of adjacent slots in batch order, or None
    unless every request's frames are in slots of one pool."""
    if not pins or any(p is None for p in pins):
        return None
    pool = pins[0].pool
    out: list[tuple[np.ndarray, int, int]] = []
    for p in pins:
        if p.pool is not pool:
            return None
        if out and out[-1][1] + out[-1][2] == p.index:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
        else:
            out.append((pool.array, p.index, 1))
    return out


def _numpy_alloc(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.zeros(shape, dtype)


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
