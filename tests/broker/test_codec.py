"""Codec: round trips over random dtypes/shapes, compatibility layouts, and a malformed corpus."""

from __future__ import annotations

import msgpack
import msgpack_numpy
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rolloutq.broker.codec import CodecLimits, MsgpackNumpyCodec, decode, encode
from rolloutq.broker.errors import CodecError

DTYPES = ["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"]

arrays = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6))
)
leaves = st.one_of(arrays, st.text(max_size=20), st.lists(st.lists(st.text(max_size=8), max_size=3), max_size=3),
                   st.integers(-(2**40), 2**40), st.booleans(), st.none())
messages = st.recursive(
    st.dictionaries(st.text(min_size=1, max_size=10), leaves, max_size=5),
    lambda children: st.dictionaries(st.text(min_size=1, max_size=10), children, max_size=4),
    max_leaves=12,
)


def _same(a, b) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert a == b


@settings(max_examples=150, deadline=None)
@given(messages)
def test_round_trip(msg):
    _same(msg, decode(encode(msg)))


@settings(max_examples=50, deadline=None)
@given(arrays)
def test_arrays_are_read_only_views(arr):
    out = decode(encode({"a": arr}))["a"]
    assert not out.flags.writeable
    if arr.ndim:
        with pytest.raises(ValueError):
            out.flat[0:1] = 0 if arr.size else out.flat[0:0]


def test_interop_with_msgpack_numpy_both_ways():
    obs = {"video.ego_view": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(1, 2, 4, 4, 3),
           "state.left_arm": np.linspace(0, 1, 7, dtype=np.float32).reshape(1, 1, 7)}
    theirs = msgpack.packb(obs, default=msgpack_numpy.encode, use_bin_type=True)
    _same(obs, decode(theirs))
    back = msgpack.unpackb(encode(obs), object_hook=msgpack_numpy.decode, raw=False)
    _same(obs, back)


def test_accepts_openpi_layout():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    payload = msgpack.packb({"state": {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str,
                                       b"shape": arr.shape},
                             "s": {b"__npgeneric__": True, b"data": 3.5, b"dtype": "<f8"}}, use_bin_type=True)
    out = decode(payload)
    _same(arr, out["state"])
    assert out["s"] == 3.5


def _nd(dtype: str, shape, data: bytes) -> dict:
    return {b"nd": True, b"type": dtype, b"kind": b"", b"shape": list(shape), b"data": data}


GOOD = encode({"a": np.zeros((2, 3), np.float32)})
MALFORMED = {
    "truncated": (GOOD[:-3], "truncated"),
    "trailing bytes": (GOOD + b"\x00", "trailing bytes"),
    "not msgpack at all": (b"\xc1\xc1\xc1", "reserved 0xc1"),
    "object dtype": (msgpack.packb({"a": _nd("|O", [1], b"\x00" * 8)}), "not allowed"),
    "pickled object via kind": (msgpack.packb({"a": {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1],
                                                     b"data": b"cos\nsystem\n."}}), "not allowed"),
    "void dtype": (msgpack.packb({"a": _nd("|V8", [1], b"\x00" * 8)}), "not allowed"),
    "structured dtype": (msgpack.packb({"a": _nd("[('x', '<i4')]", [1], b"\x00" * 4)}), "not allowed"),
    "complex dtype": (msgpack.packb({"a": _nd("<c8", [1], b"\x00" * 8)}), "not allowed"),
    "big endian": (msgpack.packb({"a": _nd(">f4", [1], b"\x00" * 4)}), "not allowed"),
    "unicode dtype": (msgpack.packb({"a": _nd("<U4", [1], b"\x00" * 16)}), "not allowed"),
    "shape x itemsize != bytes": (msgpack.packb({"a": _nd("<f4", [2, 3], b"\x00" * 20)}), "needs 24 bytes"),
    "negative dimension": (msgpack.packb({"a": _nd("<f4", [-1, 3], b"")}), "non-negative"),
    "huge dimensions": (msgpack.packb({"a": _nd("<f4", [2**40, 2**40], b"")}), "needs"),
    "float dimension": (msgpack.packb({"a": _nd("<f4", [1.5], b"\x00" * 4)}), "non-negative integers"),
    "too many dimensions": (msgpack.packb({"a": _nd("|u1", [1] * 40, b"\x00")}), "dimensions"),
    "data not bytes": (msgpack.packb({"a": {b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [1],
                                            b"data": "abcd"}}), "bin value"),
    "missing shape": (msgpack.packb({"a": {b"nd": True, b"type": "<f4", b"kind": b"", b"data": b"\x00" * 4}}),
                      "shape"),
    "dtype not a string": (msgpack.packb({"a": _nd(7, [1], b"\x00")}), "dtype"),
    "non-string map key": (msgpack.packb({1: 2}), "map keys must be msgpack str"),
    "ext type": (msgpack.packb(msgpack.ExtType(1, b"xx")), "extension type"),
    "deep nesting": (msgpack.packb(_deep := {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}),
                     "deeper"),
    "long array header": (b"\xdd" + (100_000).to_bytes(4, "big") + b"\x80" * 100_000,
                          "list of 100000 items exceeds the limit of 4096"),
    "empty-map amplification": (b"\xdc" + (1000).to_bytes(2, "big") + (b"\x9a" + b"\x80" * 10) * 1000, "maps/lists"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_input_is_rejected_with_codec_error(name):
    payload, needle = MALFORMED[name]
    with pytest.raises(CodecError) as err:
        decode(payload)
    assert needle in str(err.value), str(err.value)
    assert "Traceback" not in str(err.value)


ARRAY_FAULTS = ["object dtype", "pickled object via kind", "void dtype", "structured dtype", "complex dtype",
                "big endian", "unicode dtype", "shape x itemsize != bytes", "negative dimension", "huge dimensions",
                "float dimension", "too many dimensions", "data not bytes", "missing shape", "dtype not a string"]


@pytest.mark.parametrize("name", ARRAY_FAULTS)
def test_a_bad_array_is_named_by_its_key(name):
    """However deep the array sits (maps, lists), the message names the key at fault, and the
    message is the array's own problem, not what broke after it."""
    bad = msgpack.unpackb(MALFORMED[name][0], raw=False, strict_map_key=False)["a"]
    good = {b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [1], b"data": b"\x00" * 4}
    payload = msgpack.packb({"video": {"top": good}, "state": {"rows": [good, bad], "after": good}}, use_bin_type=True)
    with pytest.raises(CodecError) as err:
        decode(payload)
    assert str(err.value).startswith("key 'state.rows[1]': "), str(err.value)
    assert MALFORMED[name][1] in str(err.value)


def test_a_bad_map_inside_an_array_field_still_fails():
    """A bad array map used as another array map's field is refused even though its parent cannot
    hand it up."""
    bad = {b"nd": True, b"type": "|O", b"kind": b"", b"shape": [1], b"data": b"\x00" * 8}
    outer = {b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [1], b"data": bad}
    with pytest.raises(CodecError, match="not allowed"):
        decode(msgpack.packb({"a": outer}, use_bin_type=True))


def test_messages_tell_the_sender_what_to_send():
    for payload, fix in [(b"\xc1", "send the observation or action chunk as one msgpack map of named arrays"),
                         (GOOD + b"\x00\x00", "2 trailing bytes"),
                         (msgpack.packb({"a": {b"k": 1}}), "key 'a': map key b'k' has type bytes"),
                         (msgpack.packb({"a": "\xff"}, use_bin_type=False)[:-2] + b"\xa1\xff", "not UTF-8")]:
        with pytest.raises(CodecError) as err:
            decode(payload)
        assert fix in str(err.value), str(err.value)


def test_array_maps_take_str_or_bin_keys():
    """docs/PROTOCOL.md §5: array maps may have str keys (what most msgpack libraries write) or bin keys."""
    arr = np.arange(3, dtype=np.float32)
    for make in (lambda k: k, lambda k: k.encode()):
        layout = {make("nd"): True, make("type"): "<f4", make("kind"): b"", make("shape"): [3],
                  make("data"): arr.tobytes()}
        _same(arr, decode(msgpack.packb({"a": layout}, use_bin_type=True))["a"])


def _nested(depth: int, width: int, seed: int) -> object:
    """A message whose maps and lists nest exactly `depth` deep, with leaf lists and arrays beside
    the deepest path (a map or a list at each level, chosen by `seed`)."""
    inner: object = 1
    for level in range(depth):
        leaves = [["row"] for _ in range(width)]
        if (seed >> level) & 1:
            inner = [inner, *leaves, np.zeros((1, 2), np.float32)]
        else:
            inner = {"next": inner, "text": leaves, "arr": np.ones(3, np.uint8)}
    return inner


def _levels(obj: object) -> int:
    """How deep maps and lists nest (arrays are leaves): the reference the decoder must agree with."""
    if isinstance(obj, dict):
        return 1 + max((_levels(v) for v in obj.values()), default=0)
    if isinstance(obj, list):
        return 1 + max((_levels(v) for v in obj), default=0)
    return 0


@pytest.mark.parametrize("depth", [1, 5, 6, 7, 8, 9, 12])
@pytest.mark.parametrize("seed", [0, 5, 0xFFF])
def test_nesting_limit_holds_however_wide_the_message(depth, seed):
    """The walk over the decoded message is skipped when its containers cannot reach the limit:
    the verdict is the walk's, with many leaf lists (text rows) or none beside the deep path."""
    for width in (0, 12):
        msg = _nested(depth, width, seed)
        payload = encode(msg)
        if _levels(msg) <= 8:
            decode(payload)
        else:
            with pytest.raises(CodecError, match="deeper than 8"):
                decode(payload)


def test_oversize_message_rejected_before_decoding():
    codec = MsgpackNumpyCodec(CodecLimits(max_bytes=1000))
    with pytest.raises(CodecError, match="exceeds the 1000-byte limit"):
        codec.decode(b"\x00" * 1001)


def test_array_count_cap():
    codec = MsgpackNumpyCodec(CodecLimits(max_arrays=3))
    with pytest.raises(CodecError, match="more than 3 arrays"):
        codec.decode(encode({str(i): np.zeros(1) for i in range(4)}))


def test_encoder_refuses_object_arrays():
    with pytest.raises(CodecError):
        encode({"a": np.array([object()], dtype=object)})
    with pytest.raises(CodecError):
        encode({"a": {1, 2}})


plain = st.one_of(st.text(max_size=300), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False), st.booleans(),
                  st.lists(st.lists(st.text(max_size=50), max_size=3), max_size=3))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=40), st.one_of(arrays, plain), max_size=15))
def test_flat_map_fast_path_writes_what_msgpack_writes(msg):
    """Flat maps of arrays and plain values (action chunks; observations with their instruction)
    take a hand-built path; its bytes must be msgpack's own, whatever the keys, dtypes, shapes,
    sizes and values."""
    from rolloutq.broker.codec_encode import msgpack_default

    assert encode(msg) == msgpack.packb(msg, default=msgpack_default, use_bin_type=True)
    _same(decode(encode(msg)), msg)


def test_flat_map_fast_path_leaves_the_rest_to_msgpack():
    big = {"a": np.zeros(70_000, np.uint8), "b": np.arange(6, dtype="<f4").reshape(2, 3)[:, ::2]}  # bin32, strided
    _same(decode(encode(big)), big)
    nested = {"frames": [np.arange(3, dtype=np.uint8)], "text": [["pick"]], "n": 2**70 // 2**10}
    _same(decode(encode(nested)), nested)
    with pytest.raises(CodecError, match="dtype"):
        encode({"a": np.zeros(2, np.complex64)})
    with pytest.raises(CodecError, match="dtype"):
        encode({"a": np.zeros(2, ">f4")})
