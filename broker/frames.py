"""Shared-memory frames: large observation arrays skip Redis when the simulator shares the worker's host.

A REAL_G1 observation is 393 KB, nearly all camera frames. Through Redis every frame is copied
twice by one single-threaded server (in with the XADD, out with the XREADGROUP), and at 64
rollouts that is 25 MB per batch each way: on an H100 the model waited ~15 % of the time for it.
A simulator on the same host can instead write its large arrays into a POSIX shared-memory
segment (a file under /dev/shm) and send only a reference in the msgpack observation; the
request itself still travels through the request stream, so acks, re-claims, deadlines and
dead letters are unchanged. On an H100 at 64 rollouts this roughly halved the model's wait between
batches (figures in docs/benchmarks.md).

Client side, `FrameArena` keeps one segment per rollout (a rollout has one request in flight, so
one slot is enough; a resend reuses it). Worker side, `FrameReader` resolves references while
decoding, as read-only views of the segment (see its docstring for why that is safe).

Segment layout: a 64-byte header (magic, 16-byte random token, generation, data size), then the
arrays, each 64-byte aligned. A reference names the segment, offset, dtype, shape, token and
generation. The reader refuses names outside `rq-<32 hex>`, a token that does not match (a
reference is only as good as the secret it carries; segments are also mode 0600), bounds outside
the segment, and a generation that changed while it copied (the simulator gave up on that
request and wrote the next one: seqlock check).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import stat
import struct
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from rolloutq.broker.errors import CodecError, SharedFramesUnavailable

MAGIC = b"RQFRAME1"
HEADER = struct.Struct("<8s16sQQ")  # magic, token, generation, data bytes
HEADER_BYTES = 64
ALIGN = 64
NAME = re.compile(r"^rq-[0-9a-f]{32}$")
DEFAULT_DIR = "/dev/shm"
MIN_BYTES = 64 * 1024
"""Arrays smaller than this stay inline: a reference costs more than it saves below that."""


@dataclass(frozen=True)
class SharedFrame:
    """A reference to one array in a shared-memory segment, as the codec puts it on the wire."""

    segment: str
    offset: int
    dtype: str
    shape: tuple[int, ...]
    token: bytes
    generation: int

    def to_wire(self) -> dict[bytes, Any]:
        return {b"shm": self.segment, b"offset": self.offset, b"type": self.dtype, b"shape": list(self.shape),
                b"token": self.token, b"gen": self.generation}


def is_frame_map(obj: dict) -> bool:
    return b"shm" in obj or ("shm" in obj and "token" in obj)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class _Segment:
    """One writable segment, owned (and unlinked) by the process that created it."""

    def __init__(self, directory: str, data_bytes: int) -> None:
        self.name = f"rq-{secrets.token_hex(16)}"
        self.path = os.path.join(directory, self.name)
        self.token = secrets.token_bytes(16)
        self.size = HEADER_BYTES + data_bytes
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, self.size)
            self.map = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)
        self._bytes = np.frombuffer(self.map, np.uint8)
        self.generation = 0
        self._set_generation(0)

    def _set_generation(self, generation: int) -> None:
        self.map[:HEADER.size] = HEADER.pack(MAGIC, self.token, generation, self.size - HEADER_BYTES)

    def write(self, arrays: list[np.ndarray]) -> list[SharedFrame]:
        """Copy `arrays` into this segment, one after the other, and return references to them."""
        self._set_generation(0)  # readers that copy from now on see a changed generation and refuse
        self.generation += 1
        offset = HEADER_BYTES
        refs = []
        for a in arrays:
            a = np.ascontiguousarray(a)
            self._bytes[offset : offset + a.nbytes] = a.reshape(-1).view(np.uint8)
            refs.append(SharedFrame(self.name, offset, a.dtype.str, tuple(a.shape), self.token, self.generation))
            offset += _aligned(a.nbytes)
        self._set_generation(self.generation)
        return refs

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._bytes = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError, ValueError):  # arrays still exported keep the memory
            self.map.close()


class FrameArena:
    """Client side: moves the large arrays of each rollout's observation into its own segment.

    `externalize(rollout, obs)` returns the observation with every array of at least `min_bytes`
    replaced by a `SharedFrame` (maps are copied, arrays are not touched). The arrays are copied
    into the rollout's segment, which is created on first use and replaced by a larger one when an
    observation outgrows it. `forget(rollout)` and `close()` unlink segments; a process killed with
    SIGKILL leaves its segments behind (`rm /dev/shm/rq-*` when no rollouts run).
    """

    def __init__(self, directory: str = DEFAULT_DIR, min_bytes: int = MIN_BYTES) -> None:
        if not os.path.isdir(directory):
            raise SharedFramesUnavailable(
                f"shared frames need a shared-memory directory, and {directory} does not exist: turn "
                "shared frames off, or run on Linux with /dev/shm")
        self.directory = directory
        self.min_bytes = min_bytes
        self._segments: dict[str, _Segment] = {}
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._segments)  # also runs at interpreter exit

    def externalize(self, rollout: str, obs: Any) -> Any:
        big: list[np.ndarray] = []
        _collect(obs, self.min_bytes, big)
        if not big:
            return obs
        need = sum(_aligned(a.nbytes) for a in big)
        with self._lock:
            seg = self._segments.get(rollout)
            if seg is None or seg.size - HEADER_BYTES < need:
                seg = self._grow(rollout, seg, need)
            refs = seg.write(big)
        by_id = {id(a): r for a, r in zip(big, refs, strict=True)}
        return _replace(obs, by_id)

    def _grow(self, rollout: str, seg: _Segment | None, need: int) -> _Segment:
        if seg is not None:
            seg.close()
        try:
            seg = self._segments[rollout] = _Segment(self.directory, need)
        except OSError as e:
            raise SharedFramesUnavailable(
                f"could not create a {need}-byte shared-memory segment in {self.directory} ({e}): "
                "free space there (docker: raise --shm-size) or turn shared frames off") from None
        return seg

    def forget(self, rollout: str) -> None:
        with self._lock:
            seg = self._segments.pop(rollout, None)
        if seg is not None:
            seg.close()

    def close(self) -> None:
        with self._lock:
            _close_all(self._segments)

    def __len__(self) -> int:
        return len(self._segments)


def _close_all(segments: dict[str, _Segment]) -> None:
    for seg in list(segments.values()):
        seg.close()
    segments.clear()


def _collect(obj: Any, min_bytes: int, out: list[np.ndarray]) -> None:
    if isinstance(obj, dict):
        for v in obj.values():
            _collect(v, min_bytes, out)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _collect(v, min_bytes, out)
    elif isinstance(obj, np.ndarray) and obj.nbytes >= min_bytes and obj.dtype.kind in "biuf":
        out.append(obj)


def _replace(obj: Any, by_id: dict[int, SharedFrame]) -> Any:
    if isinstance(obj, dict):
        return {k: _replace(v, by_id) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_replace(v, by_id) for v in obj]
    if isinstance(obj, np.ndarray):
        return by_id.get(id(obj), obj)
    return obj


class FrameReader:
    """Worker side: resolves `SharedFrame` references to arrays, checking everything.

    By default an array is a read-only view of the simulator's segment (no copy on the worker's
    event loop: the backend's batch assembly is the one copy). A view stays valid while the
    simulator waits for its reply, which is all a request needs: the simulator writes that rollout's
    segment again only for its next request, and a request it abandoned (deadline passed) may then
    be computed on its successor's frames, but its reply is dropped by sequence number. With
    `copy=True` arrays are copied out and checked against a concurrent rewrite (seqlock).

    Open segments are cached: those unused for `idle_s` (finished rollouts: a mapping would keep an
    unlinked segment's memory alive) and the least recently used beyond `max_open` are dropped. A
    dropped segment that is still in use is simply opened again.
    """

    def __init__(self, directory: str = DEFAULT_DIR, max_open: int = 1024, max_bytes: int = 64 * 1024 * 1024,
                 copy: bool = False, idle_s: float = 30.0, clock: Any = time.monotonic) -> None:
        self.copy = copy
        self.directory = directory
        self.max_open = max_open
        self.max_bytes = max_bytes
        self.idle_s = idle_s
        self.clock = clock
        self._open: OrderedDict[str, tuple[mmap.mmap, float]] = OrderedDict()
        self._swept = clock()
        self._lock = threading.Lock()

    def read(self, name: Any, offset: Any, token: Any, generation: Any, dtype: np.dtype, shape: list[int],
             count: int) -> np.ndarray:
        """The array a reference points at, read-only (the codec has checked dtype, shape and `count`)."""
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        if not isinstance(name, str) or not NAME.match(name):
            raise CodecError("shared frame names a segment outside rq-<32 hex digits>")
        if not isinstance(token, bytes) or len(token) != 16:
            raise CodecError("shared frame token must be 16 bytes")
        if type(offset) is not int or type(generation) is not int:  # bool is refused too
            raise CodecError("shared frame offset and generation must be integers")
        nbytes = count * dtype.itemsize
        if nbytes > self.max_bytes:
            raise CodecError(f"shared frame of {nbytes} bytes exceeds the {self.max_bytes}-byte limit")
        m = self._map(name)
        magic, have_token, gen, data = HEADER.unpack_from(m, 0)
        if magic != MAGIC or not secrets.compare_digest(have_token, token):
            raise SharedFramesUnavailable(f"shared-memory segment {name} does not belong to this request "
                                          "(token mismatch)")
        if offset < HEADER_BYTES or offset + nbytes > HEADER_BYTES + data or offset + nbytes > len(m):
            raise CodecError(f"shared frame [{offset}, {offset + nbytes}) lies outside segment {name}")
        if gen != generation:
            raise CodecError(_OVERWRITTEN)
        if not self.copy:
            return np.frombuffer(m, dtype=dtype, count=count, offset=offset).reshape(shape)  # read-only map
        out = np.frombuffer(m, dtype=np.uint8, count=nbytes, offset=offset).copy().view(dtype).reshape(shape)
        if HEADER.unpack_from(m, 0)[2] != generation:
            raise CodecError(_OVERWRITTEN)
        out.flags.writeable = False
        return out

    def _map(self, name: str) -> mmap.mmap:
        now = self.clock()
        with self._lock:
            if now - self._swept >= min(5.0, self.idle_s):
                self._swept = now
                for stale in [k for k, (_, used) in self._open.items() if now - used > self.idle_s]:
                    del self._open[stale]
            hit = self._open.get(name)
            if hit is not None:
                self._open[name] = (hit[0], now)
                self._open.move_to_end(name)
                return hit[0]
        path = os.path.join(self.directory, name)
        try:  # never follow a link, never block on a FIFO someone named rq-...
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise SharedFramesUnavailable(
                f"shared-memory segment {name} is not on the policy worker's host: shared frames work only "
                "when the simulator and the worker share /dev/shm (same host, same IPC namespace); turn "
                "shared frames off for remote simulators") from None
        except PermissionError:
            raise SharedFramesUnavailable(
                f"shared-memory segment {name} is not readable by the policy worker: run the simulator as the "
                "worker's user, or turn shared frames off") from None
        except OSError:  # ELOOP: a symbolic link
            raise CodecError(f"shared-memory segment {name} is not a regular file") from None
        try:
            st = os.fstat(fd)
            size = st.st_size
            if not stat.S_ISREG(st.st_mode):
                raise CodecError(f"shared-memory segment {name} is not a regular file")
            if size < HEADER_BYTES:
                raise CodecError(f"shared-memory segment {name} is too small to hold a frame header")
            m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        with self._lock:
            self._open[name] = (m, now)
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return m

    def __len__(self) -> int:
        return len(self._open)


_OVERWRITTEN = ("shared frame was overwritten before the worker read it (the simulator moved on from this "
                "request); its reply would be discarded anyway")
