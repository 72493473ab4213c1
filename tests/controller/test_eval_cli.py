"""`rolloutq eval --episodes 4` with the defaults (G1 pick-and-place, the shipped visuomotor checkpoint;
embedded Redis, local Ray) writes a valid summary and the report's files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_eval_with_defaults_writes_summary_and_report(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "controller", "eval", "--episodes", "4", "--out", str(out), "--no-progress",
         "--video-episodes", "2", "--timeout-s", "400"],
        capture_output=True, text=True, timeout=500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("episodes", "successes", "success_rate", "success_ci95", "env_steps_per_s", "policy_calls_per_s",
                "round_trip_ms", "mean_batch_size", "config"):
        assert key in summary, key
    assert summary["episodes"] == 4 and summary["infra_failures"] == 0
    lo, hi = summary["success_ci95"]
    assert 0.0 <= lo <= summary["success_rate"] <= hi <= 1.0
    assert summary["env_steps_per_s"] > 0 and summary["policy_calls"] >= 4
    assert summary["round_trip_ms"]["p50"] > 0 and summary["mean_batch_size"] >= 1
    assert summary["config"]["task"] == "g1-pickplace" and summary["config"]["backend"] == "visuomotor"
    assert summary["policy"]["model_id"] == "g1-bc/visuomotor-v1"
    lines = (out / "episodes.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["seed"] for x in lines) == [0, 1, 2, 3]
    for png in ("success_per_seed.png", "round_trip_ms.png", "env_steps_per_s.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, png
    gifs = sorted((out / "videos").glob("*.gif"))
    assert [g.name for g in gifs] == ["episode_0000.gif", "episode_0001.gif"]
    assert all(g.read_bytes()[:6] in (b"GIF89a", b"GIF87a") and g.stat().st_size > 5000 for g in gifs)
    report = (out / "report.md").read_text()
    assert "success_per_seed.png" in report and "videos/episode_0000.gif" in report
    assert f"report: {out / 'report.md'}" in proc.stderr.replace("\n", "")
