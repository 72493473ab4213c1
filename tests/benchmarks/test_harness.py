"""The benchmark harness end to end on the CPU: a scenario file runs against a real redis-server and
a real policy worker process and leaves a record that can be cited (revision, machine, date)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.harness.__main__ import main
from benchmarks.harness.scenario import ScenarioError, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "benchmarks" / "scenarios"


@pytest.mark.slow
def test_the_cpu_scenario_writes_a_baseline_shaped_record(tmp_path):
    out = tmp_path / "cpu-smoke.json"
    assert main(["run", str(SCENARIOS / "cpu-smoke.toml"), "--out", str(out)]) == 0

    record = json.loads(out.read_text())
    assert record["scenario"] == "cpu-smoke"
    assert len(record["revision"]) == 40
    assert record["machine"]["cpus"] >= 1
    assert record["date_utc"].endswith("Z")
    assert record["complete"] is True
    results = record["results"]
    assert [r["batch"] for r in results["model"]["rows"]] == [1, 4]
    runs = results["rolloutq"]
    assert [r["name"] for r in runs] == ["plain, one row per request", "plain, two rows per request, shared frames"]
    for run in runs:
        assert "error" not in run, run.get("trace")
        for row in run["rows"]:
            assert row["errors"] == 0, row["first_error"]
            assert row["calls_per_s"] > 0 and row["env_steps_per_s"] > 0
            assert row["mean_batch"] >= 1
            assert row["ratios"]["C_over_A"] > 0
            assert row["A_beside"]["batch"] == round(row["mean_batch"])


def test_every_shipped_scenario_parses():
    names = {load_scenario(p).name for p in SCENARIOS.glob("*.toml")}
    assert {"cpu-smoke", "gpu-n64", "gpu-nsweep", "gpu-reference", "gpu-model", "gpu-options"} <= names


def test_a_scenario_with_an_unknown_key_names_it(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nbackend = "null"\n[[rolloutq]]\nns = [4]\npoll_ms = 5\n')
    with pytest.raises(ScenarioError, match="poll_ms"):
        load_scenario(bad)


def test_a_scenario_whose_rollouts_do_not_split_into_simulators_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nbackend = "null"\n[[rolloutq]]\nns = [6]\nrows_per_request = 4\n')
    with pytest.raises(ScenarioError, match="do not split"):
        load_scenario(bad)
