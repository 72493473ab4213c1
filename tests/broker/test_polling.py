"""`ReadPacer`: when a polling worker's reads block, poll every ms, or poll back to back."""

from __future__ import annotations

from broker.batcher import CohortBatcher
from broker.polling import COARSE_S, LEAD_S, ReadPacer


def _learned(think_s: float = 0.016) -> tuple[CohortBatcher[str], float]:
    """A batcher that has seen rollout r think `think_s` ten times; returns it and when r was last answered."""
    b = CohortBatcher[str](max_batch_size=8, max_wait_s=0.02)
    t = 0.0
    for i in range(10):
        b.add(f"r{i}", "k", now=t, rollout="r")
        assert b.pop_ready(now=t)[0] == [f"r{i}"]
        b.batch_done(["r"], now=t + 0.2)
        t += 0.2 + think_s
    return b, t - think_s


def test_the_reader_blocks_until_a_rollout_is_due_then_polls_for_poll_ms():
    b, answered = _learned()
    now = [answered]
    pacer = ReadPacer(b, poll_ms=5, block_ms=50, clock=lambda: now[0])
    assert pacer.plan(model_busy=True) == (50, 0.0)  # the model runs: never spin through it
    block, pause = pacer.plan(model_busy=False)  # 16 ms before r is due: a read each ms
    assert block is None and pause == COARSE_S
    now[0] = answered + 0.016 - LEAD_S + 0.0005
    assert pacer.plan(model_busy=False) == (None, 0.0)  # inside the lead: back to back
    now[0] += 0.004
    assert pacer.plan(model_busy=False) == (None, 0.0)
    now[0] += 0.0015  # 5.5 ms of polling and r has not come: block again
    assert pacer.plan(model_busy=False) == (50, 0.0)
    pacer.arrived()  # something came: a new stretch of polling
    assert pacer.plan(model_busy=False) == (None, 0.0)


def test_the_reader_blocks_when_the_batcher_cannot_tell():
    now = [0.0]
    pacer = ReadPacer(CohortBatcher[str](8, 0.02), poll_ms=5, block_ms=50, clock=lambda: now[0])
    assert pacer.plan(model_busy=False) == (50, 0.0)  # no think times known yet
    b, answered = _learned()
    b.add("r-next", "k", now=answered + 0.016, rollout="r")
    b.pop_ready(now=answered + 0.016)
    now[0] = answered + 0.017
    pacer = ReadPacer(b, poll_ms=5, block_ms=50, clock=lambda: now[0])
    assert pacer.plan(model_busy=False) == (50, 0.0)  # r's request is in: nobody is due
