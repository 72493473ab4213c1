"""Safe msgpack codec for nested maps of numpy arrays.

Observations and action chunks are maps (possibly nested) whose leaves are numpy arrays, strings,
lists of strings, numbers, booleans or None. Arrays travel in msgpack-numpy's layout
(`{b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [...], b"data": <bytes>}`); the decoder
also accepts openpi's layout (`{"__ndarray__": True, "dtype", "shape", "data"}`).

msgpack-numpy's own decoder unpickles object arrays, so we never call it: the decode hook here is
strict (dtype allow-list, shape x itemsize == byte length, caps on size, array count, container
count and depth) and returns read-only arrays that share memory with the received bytes.
An array may also travel as a reference into a shared-memory segment (`rolloutq.broker.frames`), which
only a decoder given a `FrameReader` resolves.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import numpy as np
from rolloutq.broker.errors import CodecError, SharedFramesUnavailable
from rolloutq.broker.frames import FrameReader, SharedFrame, is_frame_map

# Little-endian (or byte-order-free) bool, signed/unsigned ints and floats only.
_DTYPE = re.compile(r"^(\|b1|\|[iu]1|[<|=]?[iu][248]|[<|=]?f[248]|\?)$")
_DTYPE_NAMES = {
    "bool": "|b1", "int8": "|i1", "uint8": "|u1", "int16": "<i2", "uint16": "<u2", "int32": "<i4",
    "uint32": "<u4", "int64": "<i8", "uint64": "<u8", "float16": "<f2", "float32": "<f4",
    "float64": "<f8",
}
_MAX_NDIM = 16


@dataclass(frozen=True)
class CodecLimits:
    """Caps applied before and while decoding untrusted bytes."""

    max_bytes: int = 64 * 1024 * 1024
    max_arrays: int = 256
    max_containers: int = 4096
    max_depth: int = 8
    max_str_bytes: int = 64 * 1024


class Codec(Protocol):
    """What the broker needs from a serializer: bytes in, bytes out, `CodecError` on bad input."""

    def encode(self, obj: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


def _is_ndarray_map(obj: dict) -> bool:
    # msgpack-numpy and openpi use bin keys; text keys count only with the whole layout present.
    if b"nd" in obj or b"__ndarray__" in obj:
        return True
    return ("nd" in obj and "type" in obj and "data" in obj) or ("__ndarray__" in obj and "dtype" in obj)


_BIN = {n: n.encode() for n in ("nd", "type", "kind", "shape", "data", "dtype", "__ndarray__", "shm", "offset",
                                 "token", "gen")}


def _get(obj: dict, name: str) -> Any:
    b = _BIN.get(name) or name.encode()
    if b in obj:  # msgpack-numpy's bin keys first: the common case on the hot path
        return obj[b]
    if name in obj:
        return obj[name]
    raise CodecError(f"array map has no {name!r} field: an array is a map with the keys nd, type, kind, shape, data "
                     "(msgpack-numpy) or __ndarray__, dtype, shape, data (openpi), docs/PROTOCOL.md §5")


_DTYPE_CACHE: dict[Any, np.dtype] = {}


def _dtype(spec: Any) -> np.dtype:
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


def _shape(obj: dict) -> tuple[list[int], int]:
    shape = _get(obj, "shape")
    if not isinstance(shape, (list, tuple)):
        raise CodecError(f"array shape must be a list of integers, got {type(shape).__name__}")
    if len(shape) > _MAX_NDIM:
        raise CodecError(f"array shape has {len(shape)} dimensions; at most {_MAX_NDIM} are allowed")
    count = 1
    for d in shape:
        if type(d) is not int or d < 0:  # bool (a subclass of int) is refused too
            raise CodecError(f"array shape {list(shape)!r:.80} must hold non-negative integers only")
        count *= d
    return list(shape), count


def _array(obj: dict) -> np.ndarray:
    openpi = "__ndarray__" in obj or b"__ndarray__" in obj
    dtype = _dtype(_get(obj, "dtype" if openpi else "type"))
    if not openpi:
        kind = obj.get(b"kind", obj.get("kind", b""))
        if kind not in (b"", ""):
            raise CodecError(f"array field 'kind' must be the empty bin b\"\", got {kind!r:.40}: object and void "
                             "arrays are refused")
        if _get(obj, "nd") is not True:
            scalar = _get(obj, "data")
            if not isinstance(scalar, bytes) or len(scalar) != dtype.itemsize:
                got = f"{len(scalar)} bytes" if isinstance(scalar, bytes) else type(scalar).__name__
                raise CodecError(f"numpy scalar (nd false) of dtype {dtype.str} needs 'data' as bin of "
                                 f"{dtype.itemsize} bytes, got {got}")
            return np.frombuffer(scalar, dtype=dtype)[0]
    shape, count = _shape(obj)
    data = _get(obj, "data")
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


def _np_array(obj: dict) -> Any:
    """`_array` for a map with exactly msgpack-numpy's five bin keys, with the same checks, fewer calls."""
    try:
        spec, kind, nd, shape, data = obj[b"type"], obj[b"kind"], obj[b"nd"], obj[b"shape"], obj[b"data"]
    except KeyError:
        return _array(obj)  # another layout that happens to have five keys: the general path says what is wrong
    dtype = _DTYPE_CACHE.get(spec) if type(spec) is str else None
    if dtype is None or kind != b"" or nd is not True or type(shape) is not list or len(shape) > _MAX_NDIM \
            or type(data) is not bytes:
        return _array(obj)
    count = 1
    for d in shape:
        if type(d) is not int or d < 0:
            return _array(obj)
        count *= d
    if count * dtype.itemsize != len(data):
        return _array(obj)
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    arr.flags.writeable = False
    return arr


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
        shape, count = _shape(obj)
        return self.frames.read(_get(obj, "shm"), _get(obj, "offset"), _get(obj, "token"), _get(obj, "gen"),
                                _dtype(_get(obj, "type")), shape, count)

    def object_hook(self, obj: dict) -> Any:
        self._count()
        if len(obj) == 5 and b"nd" in obj:  # msgpack-numpy's own layout: the hot path, checked in full
            self._leaf(obj)
            return self._leaf_value(_np_array, obj)
        if _is_ndarray_map(obj):
            self._leaf(obj)
            return self._leaf_value(_array, obj)
        if is_frame_map(obj):
            self._leaf(obj)
            return self._leaf_value(self._frame, obj)
        if b"__npgeneric__" in obj or ("__npgeneric__" in obj and "dtype" in obj):
            return np.asarray(_get(obj, "data"), dtype=_dtype(_get(obj, "dtype")))[()]
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


def _default(obj: Any) -> Any:
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


def _pack_flat(obj: Any) -> bytes | None:
    """msgpack bytes of a flat map of text keys to arrays and strings (every action chunk), built
    from cached per-key headers; None for anything else. Byte for byte what `msgpack.packb` with
    `_default` gives (tests/broker/test_codec.py checks), at about a third of the cost."""
    if type(obj) is not dict or len(obj) > 15:
        return None
    parts = [bytes((0x80 | len(obj),))]
    for k, v in obj.items():
        if type(k) is not str:
            return None
        if type(v) is str:
            parts.append(msgpack.packb(k))
            parts.append(msgpack.packb(v))
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


class MsgpackNumpyCodec:
    """The default codec: msgpack with msgpack-numpy's array layout, decoded strictly.

    With a `FrameReader` (policy workers) it also resolves shared-memory frame references
    (`rolloutq.broker.frames`); without one such a reference is refused.
    """

    def __init__(self, limits: CodecLimits | None = None, frames: FrameReader | None = None) -> None:
        self.limits = limits or CodecLimits()
        self.frames = frames

    def encode(self, obj: Any) -> bytes:
        try:
            fast = _pack_flat(obj)
            if fast is not None:
                return fast
            return msgpack.packb(obj, default=_default, use_bin_type=True)
        except CodecError:
            raise
        except (TypeError, ValueError, OverflowError) as e:
            raise CodecError(f"cannot encode message: {_short(e)}: send maps with str keys, lists, strings, "
                             "numbers and arrays") from None

    def decode(self, data: bytes) -> Any:
        lim = self.limits
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CodecError(f"message must be bytes, got {type(data).__name__}")
        if len(data) > lim.max_bytes:
            raise CodecError(f"message of {len(data)} bytes exceeds the {lim.max_bytes}-byte limit: send smaller "
                             "arrays (or, on the policy workers' host, shared-memory frames, docs/PROTOCOL.md §5.1)")
        state = _Decoder(lim, self.frames)
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                object_hook=state.object_hook,
                list_hook=state.list_hook,
                strict_map_key=False,
                max_str_len=lim.max_str_bytes,
                max_bin_len=lim.max_bytes,
                max_array_len=lim.max_containers,
                max_map_len=lim.max_containers,
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
            raise CodecError(f"message is not a valid msgpack value ({_explain(e)}): send the observation or action "
                             "chunk as one msgpack map of named arrays (docs/PROTOCOL.md §5)") from None
        if state.bad is not None:
            raise CodecError(state.bad.describe())
        if state.kept > lim.max_depth and not _depth_ok(obj, lim.max_depth):
            raise CodecError(f"message nests maps/lists deeper than {lim.max_depth} levels: use flat dotted keys "
                             "(docs/PROTOCOL.md §4)")
        return obj


_TOO_LONG = re.compile(r"(\d+) exceeds max_(array|map|str|bin|ext)_len\((\d+)\)")
_UNITS = {"array": "list of {n} items", "map": "map of {n} entries", "str": "string of {n} bytes",
          "bin": "bin value of {n} bytes"}


def _explain(e: Exception) -> str:
    """What msgpack's parser objected to, in words a sender can act on (its own text is often empty)."""
    if isinstance(e, msgpack.FormatError):
        return "a byte that starts no msgpack value, such as the reserved 0xc1"
    if isinstance(e, msgpack.StackError | RecursionError):
        return "maps/lists nested deeper than the parser allows"
    if isinstance(e, UnicodeDecodeError):
        return "a str value is not UTF-8; send raw bytes as bin"
    if isinstance(e, OverflowError):
        return "an integer does not fit in 64 bits"
    text = str(e)
    if "incomplete input" in text:
        return "the bytes end in the middle of the value: truncated"
    m = _TOO_LONG.search(text)
    if m:
        n, kind, cap = m.groups()
        if kind == "ext":
            return "a msgpack extension type, which is not allowed"
        return f"a {_UNITS[kind].format(n=n)} exceeds the limit of {cap}"
    if isinstance(e, TypeError) and "unhashable" in text:
        return "a map key is a map or a list; map keys must be str"
    return _short(e)


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


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
