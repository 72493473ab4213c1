"""Page-locked frame slots (here in ordinary memory): ring order, runs, exhaustion, release."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from policy_workers.backends._frame_slots import FrameSlots, runs


def frames(v: int) -> np.ndarray:
    return np.full((1, 2, 4, 4, 3), v, np.uint8)


def test_slots_are_taken_in_ring_order_and_runs_follow_batch_order():
    pool = FrameSlots((2, 4, 4, 3), np.uint8, 4)
    pins = [pool.take(frames(v)) for v in (1, 2, 3)]
    assert [p.index for p in pins] == [0, 1, 2] and pool.array[1, 0, 0, 0, 0] == 2
    assert runs(pins) == [(pool.array, 0, 3)]
    assert [(a, n) for _, a, n in runs([pins[2], pins[0], pins[1]])] == [(2, 1), (0, 2)]
    pins[0].release()
    pins[0].release()  # twice is harmless
    assert pool.in_use() == 2
    more = [pool.take(frames(v)) for v in (4, 5, 6)]
    assert [p.index if p else None for p in more] == [3, 0, None]
    assert more[2] is None and pool.exhausted_total == 1  # all four taken


def test_runs_need_one_pool_and_every_request_staged():
    a, b = FrameSlots((2, 4, 4, 3), np.uint8, 2), FrameSlots((2, 4, 4, 3), np.uint8, 2)
    pa, pb = a.take(frames(1)), b.take(frames(2))
    assert runs([pa, pb]) is None and runs([pa, None]) is None and runs([]) is None
    with pytest.raises(ValueError, match="do not fit"):
        a.take(np.zeros((1, 2, 4, 4, 3), np.float32))


def test_a_dropped_request_gives_its_slot_back_and_threads_never_share_a_slot():
    pool = FrameSlots((2, 4, 4, 3), np.uint8, 64)
    pin = pool.take(frames(9))
    del pin
    gc.collect()
    assert pool.in_use() == 0
    taken: list[int] = []

    def grab() -> None:
        for _ in range(8):
            p = pool.take(frames(1))
            taken.append(p.index)
            p._release.detach()  # keep the slot taken after the object goes

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(64)) and pool.in_use() == 64


def test_take_many_copies_with_several_threads_into_distinct_slots():
    pool = FrameSlots((2, 4, 4, 3), np.uint8, 16)
    pins = pool.take_many([frames(v) for v in range(10)], threads=4)
    assert sorted(p.index for p in pins) == list(range(10))
    assert [int(p.array[0, 0, 0, 0, 0]) for p in pins] == list(range(10))
    assert all(np.array_equal(pool.array[p.index], frames(v)[0]) for v, p in enumerate(pins))


def shared_frames(arena, n: int) -> list[np.ndarray]:
    """n requests' frames as the worker sees them: read-only views of real shared-memory segments."""
    from broker.codec import MsgpackNumpyCodec
    from broker.frames import FrameReader

    reader, writer = MsgpackNumpyCodec(frames=FrameReader()), MsgpackNumpyCodec()
    big = (1, 2, 128, 128, 3)  # over the 64 KB threshold: goes through shared memory
    return [reader.decode(writer.encode(arena.externalize(f"r{i}", {"x": np.full(big, i, np.uint8)})))["x"]
            for i in range(n)]


def test_mapped_frames_register_each_segment_once_and_unregister_it_when_it_goes():
    from broker.frames import FrameArena
    from policy_workers.backends._frame_slots import MappedFrames, mapping_of

    calls: list[tuple] = []
    mapped = MappedFrames(lambda ptr, size: calls.append(("register", ptr, size)) or True,
                          lambda ptr: calls.append(("unregister", ptr)))
    arena = FrameArena()
    try:
        views = shared_frames(arena, 3)
        assert all(mapping_of(v) is not None for v in views) and mapping_of(np.zeros(3)) is None
        assert mapped.all_registered(views) and mapped.all_registered(views[:1])
        assert [c[0] for c in calls] == ["register"] * 3 and mapped.registered_total == 3
        assert not mapped.all_registered([views[0], np.zeros((1, 2, 128, 128, 3), np.uint8)])  # bytes: never
    finally:
        arena.close()
    del views
    gc.collect()
    assert [c[0] for c in calls].count("unregister") == 3  # each map unregistered when it was collected
    refused = MappedFrames(lambda ptr, size: False, lambda ptr: calls.append(("unregister", ptr)))
    arena = FrameArena()
    try:
        views = shared_frames(arena, 1)
        assert not refused.all_registered(views) and not refused.all_registered(views)
        assert refused.refused_total == 1  # asked once per segment
    finally:
        arena.close()
