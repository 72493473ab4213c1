"""Reading one array map from untrusted msgpack into a read-only numpy array, strictly.

Arrays travel in msgpack-numpy's layout (`{b"nd": True, b"type": "<f4", b"kind": b"",
b"shape": [...], b"data": <bytes>}`); openpi's layout (`{"__ndarray__": True, "dtype", "shape",
"data"}`) is read too. Only little-endian bool, int, uint and float dtypes pass, and shape x
itemsize must equal the byte length; the array shares memory with the received bytes.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from rolloutq.broker.errors import CodecError

# Little-endian (or byte-order-free) bool, signed/unsigned ints and floats only.
_DTYPE = re.compile(r"^(\|b1|\|[iu]1|[<|=]?[iu][248]|[<|=]?f[248]|\?)$")
_DTYPE_NAMES = {
    "bool": "|b1", "int8": "|i1", "uint8": "|u1", "int16": "<i2", "uint16": "<u2", "int32": "<i4",
    "uint32": "<u4", "int64": "<i8", "uint64": "<u8", "float16": "<f2", "float32": "<f4",
    "float64": "<f8",
}
MAX_NDIM = 16


def is_array_map(obj: dict) -> bool:
    """Whether `obj` is meant as an array (msgpack-numpy's or openpi's layout), valid or not."""
    # msgpack-numpy and openpi use bin keys; text keys count only with the whole layout present.
    if b"nd" in obj or b"__ndarray__" in obj:
        return True
    return ("nd" in obj and "type" in obj and "data" in obj) or ("__ndarray__" in obj and "dtype" in obj)


_BIN = {n: n.encode() for n in ("nd", "type", "kind", "shape", "data", "dtype", "__ndarray__", "shm", "offset",
                                 "token", "gen")}


def field(obj: dict, name: str) -> Any:
    """The field `name` of an array map, under its bin key or its str key."""
    b = _BIN.get(name) or name.encode()
    if b in obj:  # msgpack-numpy's bin keys first: the common case on the hot path
        return obj[b]
    if name in obj:
        return obj[name]
    raise CodecError(f"array map has no {name!r} field: an array is a map with the keys nd, type, kind, shape, data "
                     "(msgpack-numpy) or __ndarray__, dtype, shape, data (openpi), docs/PROTOCOL.md §5")


_DTYPE_CACHE: dict[Any, np.dtype] = {}


def checked_dtype(spec: Any) -> np.dtype:
    """The dtype named by `spec` if it is on the allow-list; CodecError otherwise."""
    known = _DTYPE_CACHE.get(spec) if isinstance(spec, str | bytes) else None
    if known is not None:
        return known
    dtype = _check_dtype(spec)
    if len(_DTYPE_CACHE) < 64:
        _DTYPE_CACHE[spec] = dtype
    return dtype


def _check_dtype(spec: Any) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str):
        raise CodecError(f"array dtype must be a string such as '<f4' or 'float32', got {type(spec).__name__}")
    spec = _DTYPE_NAMES.get(spec, spec)
    if not _DTYPE.match(spec):
        raise CodecError(
            f"array dtype {spec[:40]!r} is not allowed: send little-endian bool, int, uint or float arrays such as "
            "'<f4' or '|u1' (object, string, void, structured, complex and big-endian arrays are refused)"
        )
    return np.dtype(spec)


def checked_shape(obj: dict) -> tuple[list[int], int]:
    """An array map's shape and its element count, checked."""
    shape = field(obj, "shape")
    if not isinstance(shape, (list, tuple)):
        raise CodecError(f"array shape must be a list of integers, got {type(shape).__name__}")
    if len(shape) > MAX_NDIM:
        raise CodecError(f"array shape has {len(shape)} dimensions; at most {MAX_NDIM} are allowed")
    count = 1
    for d in shape:
        if type(d) is not int or d < 0:  # bool (a subclass of int) is refused too
            raise CodecError(f"array shape {list(shape)!r:.80} must hold non-negative integers only")
        count *= d
    return list(shape), count


def read_array(obj: dict) -> np.ndarray:
    """The array (or numpy scalar) an array map of either layout describes; CodecError if it is unsound."""
    openpi = "__ndarray__" in obj or b"__ndarray__" in obj
    dtype = checked_dtype(field(obj, "dtype" if openpi else "type"))
    if not openpi:
        kind = obj.get(b"kind", obj.get("kind", b""))
        if kind not in (b"", ""):
            raise CodecError(f"array field 'kind' must be the empty bin b\"\", got {kind!r:.40}: object and void "
                             "arrays are refused")
        if field(obj, "nd") is not True:
            scalar = field(obj, "data")
            if not isinstance(scalar, bytes) or len(scalar) != dtype.itemsize:
                got = f"{len(scalar)} bytes" if isinstance(scalar, bytes) else type(scalar).__name__
                raise CodecError(f"numpy scalar (nd false) of dtype {dtype.str} needs 'data' as bin of "
                                 f"{dtype.itemsize} bytes, got {got}")
            return np.frombuffer(scalar, dtype=dtype)[0]
    shape, count = checked_shape(obj)
    data = field(obj, "data")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"array data must be a msgpack bin value (the raw bytes, C order), got {type(data).__name__}")
    if count * dtype.itemsize != len(data):
        raise CodecError(
            f"array of shape {tuple(shape)} and dtype {dtype.str} needs {count * dtype.itemsize} bytes "
            f"(product of the shape x {dtype.itemsize}), got {len(data)}: shape, type and data disagree"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    arr.flags.writeable = False
    return arr


def read_np_array(obj: dict) -> Any:
    """`read_array` for a map with exactly msgpack-numpy's five bin keys, with the same checks, fewer calls."""
    try:
        spec, kind, nd, shape, data = obj[b"type"], obj[b"kind"], obj[b"nd"], obj[b"shape"], obj[b"data"]
    except KeyError:
        return read_array(obj)  # another layout that happens to have five keys: the general path says what is wrong
    dtype = _DTYPE_CACHE.get(spec) if type(spec) is str else None
    if dtype is None or kind != b"" or nd is not True or type(shape) is not list or len(shape) > MAX_NDIM \
            or type(data) is not bytes:
        return read_array(obj)
    count = 1
    for d in shape:
        if type(d) is not int or d < 0:
            return read_array(obj)
        count *= d
    if count * dtype.itemsize != len(data):
        return read_array(obj)
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    arr.flags.writeable = False
    return arr
