"""The strict decoder: untrusted bytes to nested maps of read-only numpy arrays, or CodecError.

msgpack-numpy's own decoder unpickles object arrays, so it is never called: msgpack's hooks here
check every array map as it is built (`codec_arrays`), count containers and arrays against
`CodecLimits`, check the size before parsing and the nesting depth after, and name the key at
fault in the error. A map that refers to a shared-memory frame (`rolloutq.broker.frames`) is
resolved through a `FrameReader`, and refused without one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from rolloutq.broker.codec_arrays import checked_dtype, checked_shape, field, is_array_map, read_array, read_np_array
from rolloutq.broker.codec_explain import explain
from rolloutq.broker.errors import CodecError, SharedFramesUnavailable
from rolloutq.broker.frames import FrameReader, is_frame_map


@dataclass(frozen=True)
class CodecLimits:
    """Caps applied before and while decoding untrusted bytes."""

    max_bytes: int = 64 * 1024 * 1024
    max_arrays: int = 256
    max_containers: int = 4096
    max_depth: int = 8
    max_str_bytes: int = 64 * 1024


class _Bad:
    """A map that failed its checks, carried up through its parents so the error names its key."""

    __slots__ = ("path", "message")
    __hash__ = None  # type: ignore[assignment]  # as a map key it is refused like any map

    def __init__(self, message: str) -> None:
        self.path: list[str] = []
        self.message = message

    def describe(self) -> str:
        where = "".join(reversed(self.path)).lstrip(".")
        return f"key {where!r}: {self.message}" if where else self.message


class _Decoder:
    """One decode's state: counts containers and arrays as msgpack builds them.

    A map that fails its checks becomes a `_Bad` that each parent hands up with its own key, so the
    error names the key at fault; after the first, nothing more is built, and `decode` raises.
    """

    __slots__ = ("limits", "containers", "arrays", "kept", "frames", "bad")

    def __init__(self, limits: CodecLimits, frames: FrameReader | None) -> None:
        self.limits = limits
        self.containers = 0
        self.arrays = 0
        self.kept = 0  # maps and lists that stay maps and lists: nesting can be no deeper than this
        self.frames = frames
        self.bad: _Bad | None = None

    def _count(self) -> None:
        self.containers += 1
        if self.containers > self.limits.max_containers:
            raise CodecError(f"message holds more than {self.limits.max_containers} maps/lists (the receiver's "
                             "limit): send numbers as arrays (msgpack-numpy array maps), not as lists")

    def _leaf(self, obj: dict) -> None:
        """An array map is about to become an array: count it, and its shape list no longer nests."""
        self.arrays += 1
        if self.arrays > self.limits.max_arrays:
            raise CodecError(f"message holds more than {self.limits.max_arrays} arrays (the receiver's limit): "
                             "send fewer keys, or stack arrays that belong together into one")
        shape = obj.get(b"shape")
        if shape is None:
            shape = obj.get("shape")
        if type(shape) is list:
            self.kept -= 1

    def _refuse(self, message: str) -> _Bad:
        bad = _Bad(message)
        if self.bad is None:
            self.bad = bad
        return bad

    def _leaf_value(self, make: Callable[[dict], Any], obj: dict) -> Any:
        if self.bad is not None:
            return None  # the message is refused already: build nothing more
        try:
            return make(obj)
        except SharedFramesUnavailable:
            raise
        except CodecError as e:
            return self._refuse(str(e))

    def _frame(self, obj: dict) -> Any:
        if self.frames is None:
            raise SharedFramesUnavailable("message refers to shared-memory frames, which this side does not "
                                          "read: send arrays inline (turn shared frames off)")
        shape, count = checked_shape(obj)
        return self.frames.read(field(obj, "shm"), field(obj, "offset"), field(obj, "token"), field(obj, "gen"),
                                checked_dtype(field(obj, "type")), shape, count)

    def object_hook(self, obj: dict) -> Any:
        self._count()
        if len(obj) == 5 and b"nd" in obj:  # msgpack-numpy's own layout: the hot path, checked in full
            self._leaf(obj)
            return self._leaf_value(read_np_array, obj)
        if is_array_map(obj):
            self._leaf(obj)
            return self._leaf_value(read_array, obj)
        if is_frame_map(obj):
            self._leaf(obj)
            return self._leaf_value(self._frame, obj)
        if b"__npgeneric__" in obj or ("__npgeneric__" in obj and "dtype" in obj):
            return np.asarray(field(obj, "data"), dtype=checked_dtype(field(obj, "dtype")))[()]
        for k in obj:
            if not isinstance(k, str):
                return self._refuse(f"map key {k!r:.40} has type {type(k).__name__}: map keys must be msgpack str "
                                    "(bin keys are read only inside an array map)")
        if self.bad is not None:
            for k, v in obj.items():
                if type(v) is _Bad:
                    v.path.append(f".{k}")
                    return v
        self.kept += 1
        return obj

    def list_hook(self, obj: list) -> Any:
        self._count()
        if self.bad is not None:
            for i, v in enumerate(obj):
                if type(v) is _Bad:
                    v.path.append(f"[{i}]")
                    return v
        self.kept += 1
        return obj


def _depth_ok(obj: Any, limit: int, depth: int = 0) -> bool:
    if isinstance(obj, dict):
        if depth >= limit:
            return False
        return all(_depth_ok(v, limit, depth + 1) for v in obj.values())
    if isinstance(obj, list):
        if depth >= limit:
            return False
        return all(_depth_ok(v, limit, depth + 1) for v in obj)
    return True


def decode_untrusted(data: bytes, limits: CodecLimits, frames: FrameReader | None = None) -> Any:
    """The message in `data`, checked against `limits`; frame references resolved through `frames`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"message must be bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise CodecError(f"message of {len(data)} bytes exceeds the {limits.max_bytes}-byte limit: send smaller "
                         "arrays (or, on the policy workers' host, shared-memory frames, docs/PROTOCOL.md §5.1)")
    state = _Decoder(limits, frames)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            object_hook=state.object_hook,
            list_hook=state.list_hook,
            strict_map_key=False,
            max_str_len=limits.max_str_bytes,
            max_bin_len=limits.max_bytes,
            max_array_len=limits.max_containers,
            max_map_len=limits.max_containers,
            max_ext_len=0,
        )
    except CodecError:
        raise
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError, OverflowError) as e:
        if state.bad is not None:  # what failed after the first bad map is not the news
            raise CodecError(state.bad.describe()) from None
        if isinstance(e, msgpack.ExtraData):
            raise CodecError(f"message has {len(e.extra)} trailing bytes after the msgpack value: send exactly "
                             "one msgpack value") from None
        raise CodecError(f"message is not a valid msgpack value ({explain(e)}): send the observation or action "
                         "chunk as one msgpack map of named arrays (docs/PROTOCOL.md §5)") from None
    if state.bad is not None:
        raise CodecError(state.bad.describe())
    if state.kept > limits.max_depth and not _depth_ok(obj, limits.max_depth):
        raise CodecError(f"message nests maps/lists deeper than {limits.max_depth} levels: use flat dotted keys "
                         "(docs/PROTOCOL.md §4)")
    return obj
