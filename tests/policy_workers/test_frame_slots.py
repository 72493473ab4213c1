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
