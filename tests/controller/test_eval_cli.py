"""`rolloutq eval --episodes 4` end to end (embedded Redis, local Ray) writes a valid summary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_eval_writes_summary(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "controller", "eval", "--episodes", "4", "--out", str(out), "--no-progress",
         "--task-option", "image_size=64", "--task-option", "max_steps=40", "--video-episodes", "1",
         "--timeout-s", "240"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("episodes", "successes", "success_rate", "success_ci95", "env_steps_per_s", "policy_calls_per_s",
                "round_trip_ms", "mean_batch_size", "config"):
        assert key in summary, key
    assert summary["episodes"] == 4 and summary["infra_failures"] == 0
    lo, hi = summary["success_ci95"]
    assert 0.0 <= lo <= summary["success_rate"] <= hi <= 1.0
    assert summary["env_steps_per_s"] > 0 and summary["policy_calls"] >= 4 * 5  # 40 steps / horizon 8
    assert summary["round_trip_ms"]["p50"] > 0 and summary["mean_batch_size"] >= 1
    assert summary["config"]["task"] == "reach" and summary["config"]["episodes"] == 4
    lines = (out / "episodes.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["seed"] for x in lines) == [0, 1, 2, 3]
    assert (out / "videos" / "episode_0000.gif").stat().st_size > 1000
    assert "episodes:" in proc.stderr and "success rate" in proc.stderr
