"""The encoder: nested maps of numpy arrays to msgpack in msgpack-numpy's array layout.

Every action chunk, and most observations, are a flat map of text keys to arrays, strings and
lists of them (an instruction), so that shape is packed by hand from cached per-key headers
(`_pack_flat`), byte for byte what msgpack writes; anything else goes through `msgpack.packb`
with `msgpack_default`, which writes arrays, numpy scalars and shared-memory frame references.
Only little-endian bool, int, uint and float arrays are sent.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
from rolloutq.broker.codec_explain import short
from rolloutq.broker.errors import CodecError
from rolloutq.broker.frames import SharedFrame


def encode_message(obj: Any) -> bytes:
    """msgpack bytes of `obj`; CodecError for what the wire cannot carry."""
    try:
        fast = _pack_flat(obj)
        if fast is not None:
            return fast
        return msgpack.packb(obj, default=msgpack_default, use_bin_type=True)
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise CodecError(f"cannot encode message: {short(e)}: send maps with str keys, lists, strings, "
                         "numbers and arrays") from None


def msgpack_default(obj: Any) -> Any:
    """The msgpack form of what msgpack cannot pack itself: arrays, numpy scalars, frame references, tuples."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf" or obj.dtype.byteorder == ">":
            raise CodecError(f"cannot send arrays of dtype {obj.dtype}: use little-endian bool, int, uint or float")
        if not obj.flags.c_contiguous:
            obj = np.ascontiguousarray(obj)
        return {b"nd": True, b"type": obj.dtype.str, b"kind": b"", b"shape": list(obj.shape),
                b"data": obj.data if obj.ndim else obj.tobytes()}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in "biuf":
            raise CodecError(f"cannot send numpy scalars of dtype {obj.dtype}: use bool, int, uint or float")
        return {b"nd": False, b"type": obj.dtype.str, b"kind": b"", b"data": obj.tobytes()}
    if isinstance(obj, SharedFrame):
        return obj.to_wire()
    if isinstance(obj, tuple):
        return list(obj)
    raise CodecError(f"cannot encode {type(obj).__name__}: send maps, lists, strings, numbers and arrays")


_HEAD: dict[tuple[str, str, tuple[int, ...]], bytes] = {}


_PLAIN = (str, list, int, float, bool)
"""Values `_pack_flat` hands to msgpack as they are; a list holding an array sends the map the general way."""


def _pack_flat(obj: Any) -> bytes | None:
    """msgpack bytes of a flat map of text keys to arrays and plain values (every action chunk; an
    observation of camera frames, a state and its instruction), built from cached per-key headers;
    None for anything else. Byte for byte what `msgpack.packb` with `msgpack_default` gives
    (tests/broker/test_codec.py checks), with one copy of each array where msgpack makes two."""
    if type(obj) is not dict or len(obj) > 15:
        return None
    parts = [bytes((0x80 | len(obj),))]
    for k, v in obj.items():
        if type(k) is not str:
            return None
        if type(v) in _PLAIN:
            try:
                packed = msgpack.packb(v, use_bin_type=True)
            except (TypeError, ValueError, OverflowError):  # e.g. arrays inside a list: the general path
                return None
            parts.append(msgpack.packb(k))
            parts.append(packed)
            continue
        if type(v) is not np.ndarray or not v.ndim or not v.flags.c_contiguous:
            return None
        dt = v.dtype
        key = (k, dt.str, v.shape)
        head = _HEAD.get(key)
        if head is None:
            if dt.kind not in "biuf" or dt.byteorder == ">":
                return None
            layout = {b"nd": True, b"type": dt.str, b"kind": b"", b"shape": list(v.shape), b"data": b""}
            head = msgpack.packb(k) + msgpack.packb(layout, use_bin_type=True)[:-2]  # minus the empty bin
            if len(_HEAD) < 256:
                _HEAD[key] = head
        parts.append(head)
        parts.append(_bin_len(v.nbytes))
        parts.append(v.data)
    return b"".join(parts)


def _bin_len(n: int) -> bytes:
    if n <= 0xFF:
        return bytes((0xC4, n))
    if n <= 0xFFFF:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")
