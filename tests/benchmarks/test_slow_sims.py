"""The slow-simulator comparison's harness (benchmarks/slow_sims): its rolloutq side end to end at
N = 2 against a real redis-server and a real policy worker process, and the figures it reports.
vla-eval's side needs its own venv and is not run here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.slow_sims.compare import main
from benchmarks.slow_sims.env import BASE_COSTS_MS, COST_RANGE_MS, RolloutLog, step_costs_ms
from benchmarks.slow_sims.report import summarise, table


@pytest.mark.slow
def test_the_rolloutq_side_runs_two_slow_rollouts_and_records_them(tmp_path):
    out = tmp_path / "slow-sims.json"
    assert main(["--ns", "2", "--steps", "3", "--systems", "rolloutq", "--out", str(out)]) == 0

    record = json.loads(out.read_text())
    assert record["scenario"] == "slow-sims" and record["date_utc"].endswith("Z")
    assert record["results"]["systems"]["rolloutq"]["max_batch_size"] == 16
    (row,) = record["results"]["rows"]
    assert "error" not in row, row.get("error")
    assert (row["system"], row["n"], row["rollouts_done"], row["steps"]) == ("rolloutq", 2, 2, 6)
    assert row["rt_p50_ms"] >= 20.0  # the policy alone sleeps 21 ms for a batch of one
    assert 1.0 <= row["mean_batch"] <= 2.0
    assert row["env_steps_per_s"] > 0
    assert set(row["rt_p50_ms_by_base_cost"]) == {f"{c:g}" for c in BASE_COSTS_MS[:2]}


def test_step_costs_are_seeded_mixed_and_within_range():
    costs = [step_costs_ms(i, 50, seed=3) for i in range(4)]
    assert np.array_equal(costs[0], step_costs_ms(0, 50, seed=3))
    assert not np.array_equal(costs[0], step_costs_ms(0, 50, seed=4))
    for i, c in enumerate(costs):
        assert COST_RANGE_MS[0] <= c.min() and c.max() <= COST_RANGE_MS[1]
        assert abs(np.median(c) - BASE_COSTS_MS[i]) <= 0.25 * BASE_COSTS_MS[i]


def test_figures_count_batches_from_what_the_replies_say():
    a = RolloutLog("x", 0, 300.0, steps=2, first_obs=10.0, last_step=11.0, rt_ms=[10.0, 30.0], batch=[2, 1])
    b = RolloutLog("x", 1, 2.0, steps=1, first_obs=10.5, last_step=12.0, rt_ms=[20.0], batch=[2])
    row = summarise([a, b], 2)
    assert row["mean_batch"] == 1.5  # three calls in two batches: one of two, one of one
    assert row["env_steps_per_s"] == round(2 / 1.0 + 1 / 1.5, 2)
    assert row["makespan_steps_per_s"] == 1.5
    assert row["rt_p50_ms"] == 20.0
    assert "| 2 | 2.67 | - |" in table([{"system": "rolloutq", **row}])
