"""The malformed-input corpus: request entries a hostile or buggy client could XADD.

Each case is (name, fields, expected statuses). `fields` are the stream entry's fields; most cases
keep a valid envelope and break the observation bytes, the rest break the envelope itself. The
worker under test publishes `tests.fault.backends.STRICT_SCHEMA`. Used by
tests/fault/test_malformed.py (live worker over Redis) and benchmarks/reliability.py.
"""

from __future__ import annotations

import msgpack
import numpy as np
from rolloutq.broker import PROTOCOL_VERSION
from rolloutq.broker.codec import CodecLimits, encode

BAD_OBS = {"bad_observation"}
SCHEMA = {"schema_mismatch"}
BAD_REQ = {"bad_request"}


def valid_obs(arm=(0.1, 0.2), **over) -> dict:
    obs = {"video.top": np.zeros((1, 1, 8, 8, 3), np.uint8),
           "state.arm": np.asarray(arm, np.float32).reshape(1, 1, 2),
           "annotation.human.task_description": [["touch the red ball"]]}
    obs.update(over)
    return {k: v for k, v in obs.items() if v is not None}


def arr(dtype, shape, data, kind=b"", nd=True) -> dict:
    return {b"nd": nd, b"type": dtype, b"kind": kind, b"shape": shape, b"data": data}


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def with_arm(arm_map) -> bytes:
    """A valid observation whose `state.arm` is replaced by a raw (possibly malformed) array map."""
    return pack({"video.top": arr("|u1", [1, 1, 8, 8, 3], bytes(192)), "state.arm": arm_map,
                 "annotation.human.task_description": [["touch"]]})


def envelope(payload: bytes, reply_to: str, seq: int = 0, **over) -> dict:
    """A request of rollout `fuzz`; `reply_to` is sent as protocol v1 did and workers ignore it (they
    derive the reply stream from the rollout id)."""
    fields = {"v": str(PROTOCOL_VERSION), "rollout": "fuzz", "seq": str(seq), "nonce": f"fuzz-nonce-{seq}",
              "reply_to": reply_to, "ttl_ms": "30000", "obs": payload}
    fields.update(over)
    return {k: v for k, v in fields.items() if v is not None}


def nested(depth: int) -> bytes:
    obj: dict = {"x": 1}
    for _ in range(depth):
        obj = {"n": obj}
    return pack(obj)


def cases(reply_to: str, limits: CodecLimits | None = None) -> list[tuple[str, dict, set[str]]]:
    lim = limits or CodecLimits()
    good = encode(valid_obs())
    f4 = np.float32(0.5).tobytes() * 2
    obs_cases: list[tuple[str, bytes, set[str]]] = [
        ("truncated msgpack", good[:-7], BAD_OBS),
        ("truncated to one byte", good[:1], BAD_OBS),
        ("trailing bytes", good + b"\x00\x01", BAD_OBS),
        ("reserved byte 0xc1", b"\xc1", BAD_OBS),
        ("empty bytes", b"", BAD_OBS),
        ("not a map (int)", pack(5), SCHEMA),
        ("not a map (list)", pack([1, 2, 3]), SCHEMA),
        ("array field is a string", encode(valid_obs(**{"state.arm": "hello"})), SCHEMA),
        ("text field is a number", encode(valid_obs(**{"annotation.human.task_description": 3})), SCHEMA),
        ("unknown key", encode(valid_obs(extra=np.zeros(1, np.float32))), SCHEMA),
        ("missing key", encode(valid_obs(**{"state.arm": None})), SCHEMA),
        ("wrong dtype vs schema", encode(valid_obs(**{"state.arm": np.zeros((1, 1, 2), np.float64)})), SCHEMA),
        ("wrong shape vs schema", encode(valid_obs(**{"video.top": np.zeros((1, 1, 16, 16, 3), np.uint8)})),
         SCHEMA),
        # non-finite floats are refused before the schema check (WorkerSettings.check_finite)
        ("NaN in finite state", encode(valid_obs(arm=(np.nan, 0.0))), BAD_OBS),
        ("Inf in finite state", encode(valid_obs(arm=(np.inf, 0.0))), BAD_OBS),
        ("-Inf in finite state", encode(valid_obs(arm=(0.0, -np.inf))), BAD_OBS),
        ("object dtype", with_arm(arr("|O", [1, 1, 2], bytes(16))), BAD_OBS),
        ("void dtype", with_arm(arr("|V8", [1, 1, 1], bytes(8))), BAD_OBS),
        ("structured dtype", with_arm(arr("[('a', '<f4'), ('b', '<f4')]", [1, 1, 1], f4)), BAD_OBS),
        ("structured dtype as list", with_arm(arr([["a", "<f4"]], [1, 1, 2], f4)), BAD_OBS),
        ("kind V", with_arm(arr("<f4", [1, 1, 2], f4, kind=b"V")), BAD_OBS),
        ("unicode dtype", with_arm(arr("<U2", [1, 1, 1], bytes(8))), BAD_OBS),
        ("complex dtype", with_arm(arr("<c8", [1, 1, 1], f4)), BAD_OBS),
        ("big-endian dtype", with_arm(arr(">f4", [1, 1, 2], f4)), BAD_OBS),
        ("datetime dtype", with_arm(arr("<M8[s]", [1, 1, 1], bytes(8))), BAD_OBS),
        ("shape x itemsize < len", with_arm(arr("<f4", [1, 1, 1], f4)), BAD_OBS),
        ("shape x itemsize > len", with_arm(arr("<f4", [1, 1, 4], f4)), BAD_OBS),
        ("negative dim", with_arm(arr("<f4", [1, -1, 2], f4)), BAD_OBS),
        ("huge dims", with_arm(arr("<f4", [2**40, 2**40, 2], f4)), BAD_OBS),
        ("dim at uint64 max", with_arm(arr("<f4", [2**64 - 1, 2**64 - 1], f4)), BAD_OBS),
        ("float dim", with_arm(arr("<f4", [1.0, 1, 2], f4)), BAD_OBS),
        ("bool dim", with_arm(arr("<f4", [True, True, 2], f4)), BAD_OBS),
        ("too many dims", with_arm(arr("<f4", [1] * 40, bytes(4))), BAD_OBS),
        ("shape not a list", with_arm(arr("<f4", 2, f4)), BAD_OBS),
        ("data not bytes", with_arm(arr("<f4", [1, 1, 2], [0.5, 0.5])), BAD_OBS),
        ("dtype not a string", with_arm(arr(7, [1, 1, 2], f4)), BAD_OBS),
        ("array map missing data", with_arm({b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [1, 1, 2]}),
         BAD_OBS),
        ("numpy scalar short data", with_arm(arr("<f8", None, b"\x00", nd=False)), BAD_OBS),
        ("npgeneric object", with_arm({"__npgeneric__": True, "dtype": "|O", "data": 1}), BAD_OBS),
        ("npgeneric overflow", with_arm({"__npgeneric__": True, "dtype": "<i8", "data": 2**64 - 1}), BAD_OBS),
        ("npgeneric nested data", with_arm({"__npgeneric__": True, "dtype": "<f4", "data": {"a": [1]}}),
         BAD_OBS),
        ("openpi object dtype", with_arm({"__ndarray__": True, "dtype": "object", "shape": [1], "data": b"x"}),
         BAD_OBS),
        ("openpi wrong length", with_arm({"__ndarray__": True, "dtype": "float32", "shape": [1, 1, 2],
                                          "data": b"abc"}), BAD_OBS),
        ("integer map keys", pack({1: 2, "state.arm": 3}), BAD_OBS),
        ("binary map keys", pack({b"k": 1}), BAD_OBS),
        ("msgpack ext type", pack({"x": msgpack.ExtType(5, b"1234")}), BAD_OBS),
        ("timestamp ext", b"\x81\xa1t" + msgpack.packb(msgpack.Timestamp(1, 0)), BAD_OBS),
        ("nesting beyond max_depth", nested(lim.max_depth + 2), BAD_OBS),
        ("nesting 100000 deep", b"\x81\xa1n" * 100_000 + b"\xc0", BAD_OBS),
        ("list nesting 100000 deep", b"\x91" * 100_000 + b"\xc0", BAD_OBS),
        ("empty-map amplification", b"\xdc\xff\xff" + b"\x80" * 65535, BAD_OBS),
        ("declared 2^32-1 map entries", b"\xdf\xff\xff\xff\xff", BAD_OBS),
        ("declared 4 GiB bin", b"\x81\xa1x\xc6\xff\xff\xff\xff", BAD_OBS),
        ("too many containers", pack([{}] * 4000 + [[] for _ in range(200)]), BAD_OBS),
        ("too many arrays", pack({f"a{i}": arr("|u1", [1], b"\x00") for i in range(lim.max_arrays + 1)}), BAD_OBS),
        ("oversize string", pack({"s": "x" * (lim.max_str_bytes + 1)}), BAD_OBS),
        ("invalid utf-8 string", b"\x81\xa1s\xa2\xff\xfe", BAD_OBS),
    ]
    out = [(name, envelope(obs, reply_to), want) for name, obs, want in obs_cases]
    out += [
        ("missing obs field", envelope(good, reply_to, obs=None), BAD_REQ),
        ("missing seq field", envelope(good, reply_to, seq=None), BAD_REQ),
        ("seq not a number", envelope(good, reply_to, seq="abc"), BAD_REQ),
        ("negative ttl", envelope(good, reply_to, ttl_ms="-5"), BAD_REQ),
        ("huge ttl digits", envelope(good, reply_to, ttl_ms="9" * 5000), BAD_REQ),
        ("seq not utf-8", envelope(good, reply_to, seq=b"\xff\xfe"), BAD_REQ),
        ("missing version", envelope(good, reply_to, v=None), BAD_REQ),
        ("future protocol version", envelope(good, reply_to, v="99"), {"unsupported_version"}),
    ]
    return out


def oversize_case(reply_to: str, limits: CodecLimits | None = None) -> dict:
    """A message one byte over the codec's size cap (rejected on its length, before any parsing)."""
    lim = limits or CodecLimits()
    return envelope(b"\x00" * (lim.max_bytes + 1), reply_to)


FRAMES_UNAVAILABLE = {"frames_unavailable"}


def frame_cases(reply_to: str, arena) -> list[tuple[str, dict, set[str]]]:
    """Hostile shared-memory frame references (`rolloutq.broker.frames`), for a worker on this host.

    `arena` is a client-side `FrameArena` in the worker's frames directory; one real segment is
    written so that token, bounds and generation checks are reached, not just the name check.
    """
    obs = valid_obs(**{"video.top": np.zeros((1, 1, 160, 160, 3), np.uint8)})  # 75 KiB: by reference
    ref = arena.externalize("fuzz-frames", obs)["video.top"].to_wire()

    def frame(**over) -> bytes:
        m = dict(ref)
        for k, v in over.items():
            m[k.encode()] = v
        return pack({"video.top": {k: v for k, v in m.items() if v is not None}, "state.arm": arr(
            "<f4", [1, 1, 2], np.float32([0.1, 0.2]).tobytes()), "annotation.human.task_description": [["t"]]})

    frame_obs: list[tuple[str, bytes, set[str]]] = [
        ("frame name with a path", frame(shm="../../etc/passwd"), BAD_OBS),
        ("frame name outside rq-", frame(shm="PostgreSQL.1"), BAD_OBS),
        ("frame segment that does not exist", frame(shm="rq-" + "0" * 32), FRAMES_UNAVAILABLE),
        ("frame token of another segment", frame(token=bytes(16)), FRAMES_UNAVAILABLE),
        ("frame token wrong length", frame(token=b"short"), BAD_OBS),
        ("frame offset inside the header", frame(offset=8), BAD_OBS),
        ("frame offset past the end", frame(offset=2**40), BAD_OBS),
        ("frame shape past the end", frame(shape=[1, 1, 1024, 1024, 3]), BAD_OBS),
        ("frame huge shape", frame(shape=[2**40, 2**40]), BAD_OBS),
        ("frame stale generation", frame(gen=ref[b"gen"] + 1), BAD_OBS),
        ("frame offset not an int", frame(offset="64"), BAD_OBS),
        ("frame object dtype", frame(type="|O"), BAD_OBS),
        ("frame map missing token", frame(token=None), BAD_OBS),
    ]
    return [(name, envelope(o, reply_to), want) for name, o, want in frame_obs]
