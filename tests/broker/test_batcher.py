"""Micro-batcher semantics (Triton's dynamic batcher: full batch, max wait, mixed shapes, order) and the
cohort batcher's dispatch rule (hold for batch-mates only when it pays)."""

from __future__ import annotations

import numpy as np
import pytest
from rolloutq.broker.batch_cost import BatchCost
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


def _steady(b: CohortBatcher, thinks: dict[str, float], batch_s: float, steps: int = 5) -> float:
    """Run `steps` lock-step rounds in which each rollout thinks its own time; returns the time after
    the last batch's answers (every rollout then has its think time measured)."""
    t = 0.0
    for _ in range(steps):
        for r, think in sorted(thinks.items(), key=lambda kv: kv[1]):
            b.add(r, "k", now=t + think, rollout=r)
        t += max(thinks.values())
        got = b.pop_ready(now=t, flush=True)
        assert sorted(got[0]) == sorted(thinks)
        t += batch_s
        b.batch_done(list(thinks), now=t, busy_s=batch_s)
    return t


def _linear_cost(fixed: float, per_row: float, sizes=(1, 8, 16)) -> BatchCost:
    cost = BatchCost()
    for n in sizes:
        cost.record(n, fixed + per_row * n)
    return cost


def test_batch_cost_fits_a_fixed_and_a_per_row_cost():
    cost = _linear_cost(0.030, 0.0005)
    fixed, per_row = cost.fixed_and_per_row()
    assert fixed == pytest.approx(0.030) and per_row == pytest.approx(0.0005)
    assert cost(64) == pytest.approx(0.062)
    one_size = BatchCost()
    one_size.record(8, 0.02)
    assert one_size(1) == one_size(64) == pytest.approx(0.02)  # one size seen: all fixed, merging is free
    assert BatchCost()(8) == 0.0
    proportional = BatchCost()
    proportional.record(1, 0.002)
    proportional.record(4, 0.004)
    proportional.record(8, 0.006)
    assert proportional.fixed_and_per_row()[0] > 0
    worse_than_linear = BatchCost()
    worse_than_linear.record(1, 0.001)
    worse_than_linear.record(10, 0.030)
    assert worse_than_linear.fixed_and_per_row() == (0.0, pytest.approx(0.0155 / 5.5))  # never a negative fixed cost


def test_fast_simulators_and_a_busy_model_hold_for_the_whole_cohort():
    """The GPU case: think 3 ms, a batch 30 ms + 0.5 ms a row. Running 6 of 8 rollouts now would leave
    the last two for a second 31 ms batch that the first six come back into: holding 2 ms pays."""
    b = CohortBatcher[str](max_batch_size=16, max_wait_s=0.005)
    thinks = {f"r{i}": 0.003 + 0.0002 * i for i in range(8)}
    t = _steady(b, thinks, batch_s=0.034)
    b.cost = _linear_cost(0.030, 0.0005)
    for i in range(6):
        b.add(f"r{i}", "k", now=t + thinks[f"r{i}"], rollout=f"r{i}")
    now = t + thinks["r5"]
    assert b.pop_ready(now=now) is None
    assert b.next_deadline() == pytest.approx(t + thinks["r7"])
    b.add("r6", "k", now=t + thinks["r6"], rollout="r6")
    assert b.pop_ready(now=t + thinks["r6"]) is None
    b.add("r7", "k", now=t + thinks["r7"], rollout="r7")
    assert len(b.pop_ready(now=t + thinks["r7"])[0]) == 8


def test_a_slow_simulator_is_not_held_for_a_peer_mid_step():
    """The LIBERO case: two rollouts of ~300 ms steps out of phase by 150 ms, a batch 40 ms + 2 ms a
    row. The other rollout is 150 ms away: the request goes at once."""
    b = CohortBatcher[str](max_batch_size=16, max_wait_s=0.005)
    t = 0.0
    for _ in range(6):  # a is answered at t, b at t + 0.15; both think 0.3 s
        b.add("a", "k", now=t, rollout="a")
        assert b.pop_ready(now=t, flush=True)[0] == ["a"]
        b.batch_done(["a"], now=t + 0.042, busy_s=0.042)
        b.add("b", "k", now=t + 0.15, rollout="b")
        assert b.pop_ready(now=t + 0.15, flush=True)[0] == ["b"]
        b.batch_done(["b"], now=t + 0.192, busy_s=0.042)
        t += 0.342
    b.cost = _linear_cost(0.040, 0.002)
    b.add("a", "k", now=t, rollout="a")
    assert b.warmed_up and b.pop_ready(now=t)[0] == ["a"]


def test_a_peer_due_very_soon_is_waited_for_even_with_slow_simulators():
    """The same costs, but b is due 5 ms after a: holding 5 ms for one 44 ms batch beats 40 ms + b
    waiting for a's batch and then its own."""
    b = CohortBatcher[str](max_batch_size=16, max_wait_s=0.005)
    t = _steady(b, {"a": 0.300, "b": 0.305}, batch_s=0.044)
    b.cost = _linear_cost(0.040, 0.002)
    b.add("a", "k", now=t + 0.300, rollout="a")
    assert b.pop_ready(now=t + 0.300) is None
    b.add("b", "k", now=t + 0.305, rollout="b")
    assert b.pop_ready(now=t + 0.305)[0] == ["a", "b"]


def test_a_peer_due_soon_but_jittery_is_not_waited_for():
    """The same, but b's steps vary (think times spread by 24 ms on average, a standard deviation of
    ~30 ms, as LIBERO's do): b due in 5 ms may well come 40 ms later, and that wait costs more than
    the batching saves, so a goes at once. With b's spread at 2 ms the hold still pays."""
    for spread, held in ((0.024, False), (0.002, True)):
        b = CohortBatcher[str](max_batch_size=16, max_wait_s=0.005)
        t = _steady(b, {"a": 0.300, "b": 0.305}, batch_s=0.044)
        b.cost = _linear_cost(0.040, 0.002)
        b.thinks.tracks["b"].spread = spread
        b.add("a", "k", now=t + 0.300, rollout="a")
        got = b.pop_ready(now=t + 0.300)
        assert (got is None) == held, spread
        if held:
            assert b.next_deadline() < t + 0.305  # re-decided at b's earliest likely arrival


def test_a_late_jittery_peer_is_given_up_as_its_likely_arrivals_pass():
    """Holding for a jittery peer is re-decided as time passes. A batch of 12 ms (10 + 2 a row), b due
    1 ms after a with a 5 ms jitter: holding pays while b is likely within a few ms, so a is held; at
    b's due time only b's later arrivals remain likely, holding for them no longer pays, and a goes,
    long before b stops being expected at all (30 ms late: a tenth of its think time)."""
    b = CohortBatcher[str](max_batch_size=16, max_wait_s=0.005)
    t = _steady(b, {"a": 0.300, "b": 0.301}, batch_s=0.044)
    b.cost = _linear_cost(0.010, 0.002)
    b.thinks.tracks["b"].spread = 0.004
    b.add("a", "k", now=t + 0.300, rollout="a")
    assert b.pop_ready(now=t + 0.300) is None
    assert b.next_deadline() == pytest.approx(t + 0.301)
    assert b.pop_ready(now=t + 0.301)[0] == ["a"]


def test_a_model_that_costs_nothing_to_call_never_holds():
    """A null backend (0.2 ms a batch whatever its size): a new rollout's first request is served at
    once, not held for the others' next requests 20 ms away."""
    b = CohortBatcher[str](max_batch_size=16, max_wait_s=0.005)
    t = _steady(b, {"a": 0.020, "b": 0.021}, batch_s=0.0002)
    b.add("c", "k", now=t + 0.001, rollout="c")
    assert b.pop_ready(now=t + 0.001)[0] == ["c"]


def test_an_overdue_rollout_stops_being_waited_for():
    """b's episode ended without a word: a's request is held only until b is overdue by its slack
    (2 x its think time's spread, at least 1 ms and a tenth of its think time), then goes alone."""
    b = CohortBatcher[str](max_batch_size=16, max_wait_s=0.005)
    t = _steady(b, {"a": 0.003, "b": 0.004}, batch_s=0.034)
    b.cost = _linear_cost(0.030, 0.0005)
    b.add("a", "k", now=t + 0.003, rollout="a")
    assert b.pop_ready(now=t + 0.003) is None
    assert b.next_deadline() == pytest.approx(t + 0.004)  # b is due then...
    assert b.pop_ready(now=t + 0.0045) is None
    assert b.next_deadline() == pytest.approx(t + 0.005)  # ...and stops being expected 1 ms later
    assert b.pop_ready(now=t + 0.005)[0] == ["a"]


def test_cohort_does_not_wait_for_a_rollout_its_simulator_said_ended():
    """A simulator that runs episodes back to back starts rollout c as b ends: told that b ended
    (the request's `ended` field), the batcher serves c's first request with a's at once."""
    b = CohortBatcher[str](max_batch_size=16, max_wait_s=0.005)
    t = _steady(b, {"a": 0.003, "b": 0.004}, batch_s=0.034)
    b.cost = _linear_cost(0.030, 0.0005)
    b.add("a", "k", now=t + 0.003, rollout="a")
    b.add("c", "k", now=t + 0.003, rollout="c")
    assert b.pop_ready(now=t + 0.003) is None  # b is due in 1 ms: held for it
    b.retire(("b",))
    assert b.pop_ready(now=t + 0.003)[0] == ["a", "c"]


def test_a_hold_never_exceeds_the_merge_cap():
    b = CohortBatcher[str](max_batch_size=16, max_wait_s=0.005, max_merge_s=0.01)
    t = _steady(b, {"a": 0.001, "b": 0.050}, batch_s=1.0)
    b.cost = _linear_cost(1.0, 0.0)  # a 1 s batch makes any merge worth it
    b.add("a", "k", now=t + 0.001, rollout="a")
    assert b.pop_ready(now=t + 0.001) is None
    assert b.next_deadline() == pytest.approx(t + 0.011)
    assert b.pop_ready(now=t + 0.011)[0] == ["a"]
