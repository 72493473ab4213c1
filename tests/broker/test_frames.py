"""Shared-memory frames (`rolloutq.broker.frames`): what the client writes is what the worker reads, and
every way a reference can be wrong is refused with a `CodecError` the client can act on."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from rolloutq.broker.codec import MsgpackNumpyCodec
from rolloutq.broker.errors import CodecError, SharedFramesUnavailable
from rolloutq.broker.frames import HEADER_BYTES, MIN_BYTES, FrameArena, FrameReader, SharedFrame


def g1_like(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"video.ego_view": rng.integers(0, 256, (1, 2, 256, 256, 3), dtype=np.uint8),
            "state.left_arm": rng.standard_normal((1, 1, 7)).astype(np.float32),
            "depth": rng.standard_normal((1, 128, 128)).astype(np.float32),  # 64 KiB: by reference
            "annotation.human.task_description": [["pick up the apple"]]}


@pytest.fixture
def shm_dir(tmp_path):
    # a private directory stands in for /dev/shm (same code path: files + mmap), so tests never collide
    d = tmp_path / "shm"
    d.mkdir()
    return str(d)


def read_ref(reader: FrameReader, m: dict, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    """`FrameReader.read` on a wire map, as the codec calls it."""
    return reader.read(m[b"shm"], m[b"offset"], m[b"token"], m[b"gen"], dtype, shape, math.prod(shape))


def roundtrip(arena: FrameArena, reader: FrameReader, rollout: str, obs: dict) -> tuple[bytes, dict]:
    wire = MsgpackNumpyCodec().encode(arena.externalize(rollout, obs))
    return wire, MsgpackNumpyCodec(frames=reader).decode(wire)


def test_large_arrays_travel_by_reference_and_small_ones_inline(shm_dir):
    arena, reader = FrameArena(shm_dir), FrameReader(shm_dir)
    obs = g1_like()
    wire, got = roundtrip(arena, reader, "r0", obs)
    assert len(wire) < 2000  # 393 KB of frames + a 64 KiB depth map became two references
    for k in ("video.ego_view", "depth", "state.left_arm"):
        np.testing.assert_array_equal(got[k], obs[k])
        assert got[k].dtype == obs[k].dtype and not got[k].flags.writeable
    assert got["annotation.human.task_description"] == [["pick up the apple"]]
    assert obs["state.left_arm"].nbytes < MIN_BYTES and len(os.listdir(shm_dir)) == 1
    # a view of the segment (no copy on the worker's loop): valid until the rollout's next request
    with pytest.raises(ValueError, match="read-only"):
        got["video.ego_view"][0, 0, 0, 0, 0] = 1
    nxt = g1_like(1)
    roundtrip(arena, reader, "r0", nxt)
    np.testing.assert_array_equal(got["video.ego_view"], nxt["video.ego_view"])
    # copy=True: the worker owns what it decoded
    copying = FrameReader(shm_dir, copy=True)
    _, owned = roundtrip(arena, copying, "r0", obs)
    roundtrip(arena, reader, "r0", nxt)
    np.testing.assert_array_equal(owned["video.ego_view"], obs["video.ego_view"])
    assert not owned["video.ego_view"].flags.writeable
    arena.close()


def test_one_segment_per_rollout_grown_on_demand_and_unlinked(shm_dir):
    arena, reader = FrameArena(shm_dir), FrameReader(shm_dir)
    for i in range(3):
        roundtrip(arena, reader, f"r{i}", g1_like(i))
    assert len(os.listdir(shm_dir)) == 3
    first = set(os.listdir(shm_dir))
    big = g1_like() | {"video.ego_view": np.ones((1, 4, 256, 256, 3), np.uint8)}
    _, got = roundtrip(arena, reader, "r0", big)
    assert got["video.ego_view"].shape == (1, 4, 256, 256, 3) and got["video.ego_view"].min() == 1
    assert len(os.listdir(shm_dir)) == 3 and set(os.listdir(shm_dir)) != first  # r0's segment replaced
    arena.forget("r1")
    assert len(os.listdir(shm_dir)) == 2
    arena.close()
    assert os.listdir(shm_dir) == []


def test_a_frame_rewritten_for_the_next_request_is_refused(shm_dir):
    arena, reader = FrameArena(shm_dir), FrameReader(shm_dir)
    old = MsgpackNumpyCodec().encode(arena.externalize("r0", g1_like(0)))
    MsgpackNumpyCodec().encode(arena.externalize("r0", g1_like(1)))  # the simulator moved on
    for r in (reader, FrameReader(shm_dir, copy=True)):
        with pytest.raises(CodecError, match="overwritten"):
            MsgpackNumpyCodec(frames=r).decode(old)
    arena.close()


def test_references_are_refused_where_frames_cannot_be_read(shm_dir, tmp_path):
    arena = FrameArena(shm_dir)
    wire = MsgpackNumpyCodec().encode(arena.externalize("r0", g1_like()))
    with pytest.raises(SharedFramesUnavailable, match="does not read"):
        MsgpackNumpyCodec().decode(wire)  # a decoder without a reader (e.g. the client's own)
    other = tmp_path / "other-host"
    other.mkdir()
    with pytest.raises(SharedFramesUnavailable, match="not on the policy worker's host"):
        MsgpackNumpyCodec(frames=FrameReader(str(other))).decode(wire)
    arena.close()


def test_forged_references_are_refused(shm_dir):
    arena, reader = FrameArena(shm_dir), FrameReader(shm_dir)
    ref: SharedFrame = arena.externalize("r0", g1_like())["video.ego_view"]
    dt, shape = np.dtype(ref.dtype), list(ref.shape)

    def read(**over):
        m = ref.to_wire()
        m.update({k.encode(): v for k, v in over.items()})
        return read_ref(reader, m, dt, over.get("shape", shape))

    assert read().shape == ref.shape
    with pytest.raises(CodecError, match="outside rq-"):
        read(shm="../" + ref.segment)
    with pytest.raises(SharedFramesUnavailable, match="token mismatch"):
        read(token=bytes(16))
    with pytest.raises(CodecError, match="outside segment"):
        read(offset=HEADER_BYTES - 8)
    with pytest.raises(CodecError, match="outside segment"):
        read_ref(reader, ref.to_wire(), dt, [1, 3, 256, 256, 3])
    with pytest.raises(CodecError, match="exceeds"):
        read_ref(reader, ref.to_wire(), dt, [2**40, 2**40])
    with pytest.raises(CodecError, match="integers"):
        read(gen=True)
    arena.close()


def test_reader_drops_mappings_of_finished_rollouts(shm_dir):
    now = [0.0]
    arena, reader = FrameArena(shm_dir), FrameReader(shm_dir, idle_s=30.0, clock=lambda: now[0])
    for i in range(3):
        roundtrip(arena, reader, f"r{i}", g1_like(i))
    assert len(reader) == 3
    arena.forget("r0")
    arena.forget("r1")  # episodes over: segments unlinked, only the worker's mappings keep them
    now[0] = 20.0
    roundtrip(arena, reader, "r2", g1_like(2))
    now[0] = 40.0
    _, got = roundtrip(arena, reader, "r2", g1_like(5))
    assert len(reader) == 1  # r0 and r1 idle for 40 s: dropped; r2 used at 20 s: kept
    np.testing.assert_array_equal(got["video.ego_view"], g1_like(5)["video.ego_view"])
    small = FrameReader(shm_dir, max_open=1)
    for i in range(3, 5):
        roundtrip(arena, small, f"r{i}", g1_like(i))
    assert len(small) == 1
    arena.close()


def test_links_fifos_and_short_files_under_a_segment_name_are_refused(shm_dir, tmp_path):
    reader = FrameReader(shm_dir)
    ref = {b"shm": "", b"offset": 64, b"type": "|u1", b"shape": [4], b"token": bytes(16), b"gen": 1}
    target = tmp_path / "secret"
    target.write_bytes(b"RQFRAME1" + bytes(120))
    cases = {"rq-" + "1" * 32: lambda p: os.symlink(target, p), "rq-" + "2" * 32: os.mkfifo,
             "rq-" + "3" * 32: lambda p: open(p, "wb").close()}
    for name, make in cases.items():
        make(os.path.join(shm_dir, name))
        with pytest.raises(CodecError, match="regular file|too small"):  # and a FIFO does not block the worker
            read_ref(reader, {**ref, b"shm": name}, np.dtype("|u1"), [4])


def test_arena_needs_a_shared_memory_directory(tmp_path):
    with pytest.raises(SharedFramesUnavailable, match="does not exist"):
        FrameArena(str(tmp_path / "missing"))
