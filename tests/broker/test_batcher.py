"""Micro-batcher semantics (Triton's dynamic batcher): full batch, max wait, mixed shapes, order."""

from __future__ import annotations

import numpy as np
import pytest
from rolloutq.broker.batcher import CohortBatcher, MicroBatcher, signature


def test_full_batch_dispatches_immediately():
    b = MicroBatcher[int](max_batch_size=4, max_wait_s=10.0)
    for i in range(3):
        b.add(i, "k", now=0.0)
    assert b.pop_ready(now=0.0) is None
    b.add(3, "k", now=0.0)
    items, _ = b.pop_ready(now=0.0)
    assert items == [0, 1, 2, 3]
    assert len(b) == 0


def test_partial_batch_waits_for_max_wait_of_oldest():
    b = MicroBatcher[int](max_batch_size=8, max_wait_s=0.005)
    b.add(1, "k", now=1.000)
    b.add(2, "k", now=1.004)
    assert b.pop_ready(now=1.0049) is None
    assert abs(b.next_deadline() - 1.005) < 1e-9
    items, arrivals = b.pop_ready(now=1.005)
    assert items == [1, 2] and arrivals == [1.000, 1.004]


def test_batch_never_exceeds_max_size_and_keeps_fifo():
    b = MicroBatcher[int](max_batch_size=3, max_wait_s=0.0)
    for i in range(7):
        b.add(i, "k", now=float(i))
    out = []
    while (got := b.pop_ready(now=100.0)) is not None:
        assert len(got[0]) <= 3
        out.append(got[0])
    assert out == [[0, 1, 2], [3, 4, 5], [6]]


def test_mixed_shapes_form_separate_batches_oldest_group_first():
    small = {"img": np.zeros((1, 2, 8, 8, 3), np.uint8), "lang": [["a"]]}
    large = {"img": np.zeros((1, 2, 16, 16, 3), np.uint8), "lang": [["b"]]}
    other_text = {"img": np.zeros((1, 2, 8, 8, 3), np.uint8), "lang": [["something else"]]}
    assert signature(small) == signature(other_text)  # text does not split batches
    assert signature(small) != signature(large)
    b = MicroBatcher[str](max_batch_size=8, max_wait_s=0.01)
    b.add("L1", signature(large), now=0.0)
    b.add("S1", signature(small), now=0.001)
    b.add("S2", signature(other_text), now=0.002)
    b.add("L2", signature(large), now=0.003)
    first, _ = b.pop_ready(now=0.02)
    second, _ = b.pop_ready(now=0.02)
    assert first == ["L1", "L2"] and second == ["S1", "S2"]
    assert b.pop_ready(now=1.0) is None


def test_dtype_difference_splits_batches():
    a = {"x": np.zeros((1, 3), np.float32)}
    c = {"x": np.zeros((1, 3), np.float64)}
    assert signature(a) != signature(c)


def test_flush_takes_partial_batches():
    b = MicroBatcher[int](max_batch_size=8, max_wait_s=60.0)
    b.add(1, "a", now=0.0)
    assert b.pop_ready(now=0.0) is None
    assert b.pop_ready(now=0.0, flush=True)[0] == [1]


def test_full_group_preferred_by_age_among_ready():
    b = MicroBatcher[str](max_batch_size=2, max_wait_s=60.0)
    b.add("b1", "b", now=0.5)
    b.add("a1", "a", now=0.1)
    b.add("b2", "b", now=0.6)
    # only group b is full; group a is older but not ready
    assert b.pop_ready(now=1.0)[0] == ["b1", "b2"]


def test_cohort_serves_a_lone_rollout_at_once():
    from rolloutq.broker.batcher import CohortBatcher

    b = CohortBatcher[str](max_batch_size=32, max_wait_s=0.05)
    b.add("r0-s0", "k", now=0.0, rollout="r0")
    assert b.pop_ready(now=0.0)[0] == ["r0-s0"]


def test_cohort_waits_for_the_active_population_then_merges():
    from rolloutq.broker.batcher import CohortBatcher

    b = CohortBatcher[str](max_batch_size=32, max_wait_s=0.05)
    for i in range(4):  # four rollouts are active
        b.add(f"r{i}", "k", now=0.0, rollout=f"r{i}")
    assert b.pop_ready(now=0.0)[0] == ["r0", "r1", "r2", "r3"]
    b.batch_done(["r0", "r1", "r2", "r3"], now=0.1)
    b.add("r0", "k", now=0.11, rollout="r0")
    b.add("r1", "k", now=0.112, rollout="r1")
    assert b.pop_ready(now=0.113) is None  # r2 and r3 are still stepping their simulators
    b.add("r2", "k", now=0.114, rollout="r2")
    b.add("r3", "k", now=0.115, rollout="r3")
    assert b.pop_ready(now=0.115)[0] == ["r0", "r1", "r2", "r3"]  # one batch again, not two halves


def test_cohort_gives_up_on_stragglers_after_the_merge_wait():
    from rolloutq.broker.batcher import CohortBatcher

    b = CohortBatcher[str](max_batch_size=32, max_wait_s=0.02)
    b.add("a", "k", now=0.0, rollout="a")
    b.add("b", "k", now=0.0, rollout="b")
    assert b.pop_ready(now=0.0)[0] == ["a", "b"]
    b.add("a", "k", now=1.0, rollout="a")  # b never comes back (its episode ended)
    assert b.pop_ready(now=1.0) is None
    assert abs(b.next_deadline() - 1.02) < 1e-9
    assert b.pop_ready(now=1.021)[0] == ["a"]


def test_cohort_stops_waiting_for_a_finished_rollout_but_not_for_a_slow_one():
    from rolloutq.broker.batcher import CohortBatcher

    b = CohortBatcher[str](max_batch_size=32, max_wait_s=0.02)  # population window 2 s
    t = 0.0
    for step in range(9):  # a and b think ~10 ms between answer and next request
        b.add(f"a{step}", "k", now=t, rollout="a")
        b.add(f"b{step}", "k", now=t + 0.001, rollout="b")
        assert b.pop_ready(now=t + 0.001)[0] == [f"a{step}", f"b{step}"]
        b.batch_done(["a", "b"], now=t + 0.05)
        t += 0.06
    # b's episode ended. a's next request waits one merge wait (1.5 x p90 think = ~16 ms) at most...
    b.add("a9", "k", now=t, rollout="a")
    assert b.pop_ready(now=t) is None
    assert b.pop_ready(now=t + 0.02)[0] == ["a9"]
    b.batch_done(["a"], now=t + 0.05)
    # ...and once b has been silent for 3 think times, a is served at once, well inside the 2 s window
    b.add("a10", "k", now=t + 0.06, rollout="a")
    assert b.pop_ready(now=t + 0.06)[0] == ["a10"]
    b.batch_done(["a"], now=t + 0.1)
    # a slow rollout is active again with its next request
    b.add("b9", "k", now=t + 0.11, rollout="b")
    b.add("a11", "k", now=t + 0.11, rollout="a")
    assert b.pop_ready(now=t + 0.11)[0] == ["b9", "a11"]


def test_cohort_respects_max_batch_size():
    from rolloutq.broker.batcher import CohortBatcher

    b = CohortBatcher[int](max_batch_size=4, max_wait_s=1.0)
    for i in range(10):
        b.add(i, "k", now=0.0, rollout=f"r{i}")
    assert b.pop_ready(now=0.0)[0] == [0, 1, 2, 3]


def test_batches_count_rows_and_never_split_a_request():
    """A vectorized simulator's request carries several rows; a batch holds at most max_batch_size
    rows, whole requests only, in arrival order."""
    b = MicroBatcher[str](max_batch_size=8, max_wait_s=1.0)
    b.add("a3", "k", now=0.0, rows=3)
    b.add("b4", "k", now=0.001, rows=4)
    assert b.pop_ready(now=0.002) is None  # 7 rows of 8: not full, not overdue
    b.add("c2", "k", now=0.003, rows=2)  # 9 rows: full, but c2 does not fit beside a3 and b4
    assert b.pop_ready(now=0.004)[0] == ["a3", "b4"]
    assert len(b) == 1 and b.pop_ready(now=0.005) is None  # 2 rows left, not overdue
    b.add("d6", "k", now=0.006, rows=6)
    assert b.pop_ready(now=0.007)[0] == ["c2", "d6"]
    with pytest.raises(ValueError, match="9 rows cannot fit batches of at most 8"):
        b.add("too-big", "k", now=0.0, rows=9)


def test_signature_looks_past_the_leading_dimension():
    one = {"img": np.zeros((1, 2, 8, 8, 3), np.uint8), "state": {"arm": np.zeros((1, 7), np.float32)}}
    four = {"img": np.zeros((4, 2, 8, 8, 3), np.uint8), "state": {"arm": np.zeros((4, 7), np.float32)}}
    assert signature(one) == signature(four)  # rows stack along the leading dimension
    assert signature(one) != signature({**one, "img": np.zeros((4, 2, 9, 8, 3), np.uint8)})


def test_cohort_batch_is_ready_when_its_rows_fill_it():
    b = CohortBatcher[str](max_batch_size=8, max_wait_s=1.0)
    for i in range(3):  # three active rollouts
        b.add(f"r{i}", "k", now=0.0, rollout=f"r{i}")
    assert b.pop_ready(now=0.0)[0] == ["r0", "r1", "r2"]
    b.add("r0-big", "k", now=0.1, rollout="r0", rows=4)
    assert b.pop_ready(now=0.1) is None  # waits for r1 and r2
    b.add("r1-big", "k", now=0.1, rollout="r1", rows=4)
    assert b.pop_ready(now=0.1)[0] == ["r0-big", "r1-big"]  # 8 rows: full before r2 asks


def test_cohort_says_when_the_next_request_is_due():
    """`due_in` (what a polling worker reads): unknown until 8 think times are known, 0 while a batch
    is partly in, the shortest usual think time after an answer, unknown again once the rollouts left."""
    b = CohortBatcher[str](max_batch_size=8, max_wait_s=0.02)
    assert b.due_in(0.0) is None
    t = 0.0
    for step in range(6):  # a thinks 10 ms between its answer and its next request, b 11 ms
        b.add(f"a{step}", "k", now=t, rollout="a")
        b.add(f"b{step}", "k", now=t + 0.001, rollout="b")
        assert b.pop_ready(now=t + 0.001)[0] == [f"a{step}", f"b{step}"]
        b.batch_done(["a", "b"], now=t + 0.05)
        t += 0.06
        if step < 4:
            assert b.due_in(t - 0.009) is None  # fewer than 8 think times known
    served = t - 0.01
    assert b.due_in(served) == pytest.approx(0.01)
    assert b.due_in(served + 0.004) == pytest.approx(0.006)
    assert b.due_in(served + 0.02) == 0.0  # overdue
    b.add("a6", "k", now=t, rollout="a")
    assert b.pop_ready(now=t) is None and b.due_in(t) == 0.0  # partly in: b is expected any moment
    b.add("b6", "k", now=t + 0.001, rollout="b")
    assert b.pop_ready(now=t + 0.001)[0] == ["a6", "b6"]
    assert b.due_in(t + 0.002) is None  # both are in the batch: nobody is due until it is answered
    b.batch_done(["a", "b"], now=t + 0.05)
    assert b.due_in(t + 0.05) == pytest.approx(0.01)
    assert b.due_in(t + 0.05 + 3 * 0.011 + 0.001) is None  # silent for 3 p90 think times: they left
    assert MicroBatcher[str](8, 0.02).due_in(0.0) is None  # the deadline rule never predicts


def test_cohort_does_not_wait_for_a_rollout_its_simulator_said_ended():
    """A simulator that runs episodes back to back starts rollout c as b ends: told that b ended
    (the request's `ended` field), the batcher serves c's first request with a's at once instead of
    holding them a merge wait for b."""
    b = CohortBatcher[str](max_batch_size=32, max_wait_s=0.02)
    t = 0.0
    for step in range(9):
        b.add(f"a{step}", "k", now=t, rollout="a")
        b.add(f"b{step}", "k", now=t + 0.001, rollout="b")
        assert b.pop_ready(now=t + 0.001)[0] == [f"a{step}", f"b{step}"]
        b.batch_done(["a", "b"], now=t + 0.05)
        t += 0.06
    b.add("a9", "k", now=t, rollout="a")
    b.add("c0", "k", now=t, rollout="c")
    assert b.pop_ready(now=t) is None  # b still counts: held for it
    b.retire(("b",))
    assert b.pop_ready(now=t)[0] == ["a9", "c0"]
