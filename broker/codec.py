"""The codec: msgpack for nested maps of numpy arrays, decoded strictly.

Observations and action chunks are maps (possibly nested) whose leaves are numpy arrays, strings,
lists of strings, numbers, booleans or None. Arrays travel in msgpack-numpy's layout
(`{b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [...], b"data": <bytes>}`); the decoder
also accepts openpi's layout (`{"__ndarray__": True, "dtype", "shape", "data"}`).

This module is what callers use; the parts each do one thing: `codec_encode` packs (with a fast
path for flat maps), `codec_decode` is the strict decoder of untrusted bytes, `codec_arrays`
checks one array map, `codec_explain` words msgpack's errors. `first_non_finite` finds the NaN
or infinity in a decoded message. The decoder never unpickles and
returns read-only arrays that share memory with the received bytes. An array may also travel as
a reference into a shared-memory segment (`rolloutq.broker.frames`), which only a decoder given a
`FrameReader` resolves.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from rolloutq.broker.codec_decode import CodecLimits, decode_untrusted
from rolloutq.broker.codec_encode import encode_message
from rolloutq.broker.frames import FrameReader

__all__ = ["Codec", "CodecLimits", "MsgpackNumpyCodec", "decode", "encode", "first_non_finite"]


class Codec(Protocol):
    """What the broker needs from a serializer: bytes in, bytes out, `CodecError` on bad input."""

    def encode(self, obj: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class MsgpackNumpyCodec:
    """The default codec: msgpack with msgpack-numpy's array layout, decoded strictly.

    With a `FrameReader` (policy workers) it also resolves shared-memory frame references
    (`rolloutq.broker.frames`); without one such a reference is refused.
    """

    def __init__(self, limits: CodecLimits | None = None, frames: FrameReader | None = None) -> None:
        self.limits = limits or CodecLimits()
        self.frames = frames

    def encode(self, obj: Any) -> bytes:
        return encode_message(obj)

    def decode(self, data: bytes) -> Any:
        return decode_untrusted(data, self.limits, self.frames)


_default_codec = MsgpackNumpyCodec()


def encode(obj: Any) -> bytes:
    """Encode with the default codec."""
    return _default_codec.encode(obj)


def decode(data: bytes, limits: CodecLimits | None = None) -> Any:
    """Decode with the default codec (or with the given limits)."""
    if limits is None:
        return _default_codec.decode(data)
    return MsgpackNumpyCodec(limits).decode(data)


def first_non_finite(tree: Any, prefix: str = "") -> str | None:
    """The key of the first float array (or float) in `tree` that holds NaN or infinity, else None.

    Observations and action chunks are checked with this by default: a NaN that reaches a policy
    comes back as NaN actions, and a NaN action would end a simulated episode as if the simulator
    had failed, when it is the policy that did.
    """
    if isinstance(tree, dict):
        for k, v in tree.items():
            name = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
            found = first_non_finite(v, f"{prefix}{name}" if not prefix else f"{prefix}.{name}")
            if found is not None:
                return found
        return None
    if isinstance(tree, np.ndarray):
        if tree.dtype.kind == "f" and tree.size and not np.isfinite(tree).all():
            return prefix or "<array>"
        return None
    if isinstance(tree, float) and not np.isfinite(tree):
        return prefix or "<value>"
    if isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            found = first_non_finite(v, f"{prefix}[{i}]")
            if found is not None:
                return found
    return None
