"""`rolloutq eval --episodes 4` with the defaults (G1 pick-and-place, the shipped visuomotor checkpoint;
embedded Redis, local Ray) writes a valid summary and the report's files; every run writes the
configuration it ran to its folder, a file that runs it again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib

import pytest

pytestmark = pytest.mark.slow


def test_eval_with_defaults_writes_summary_and_report(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "eval.toml"
    config.write_text("progress = false\nvideo_episodes = 2\ntimeout_s = 400\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rolloutq.controller", "eval", "--episodes", "4", "--out", str(out),
         "--config", str(config)],
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


def test_every_run_writes_the_configuration_it_ran_next_to_its_summary(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "eval.yaml"
    config.write_text("progress: false\nvideo_episodes: 0\ntimeout_s: 300\nworker: {batch: {max_wait_ms: 2.0}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUTQ_")}
    proc = subprocess.run(
        [sys.executable, "-m", "rolloutq.controller", "eval", "--backend", "null", "--task", "reach", "--episodes", "2",
         "--envs-per-sim", "2", "--task-option", "max_steps=24", "--out", str(out), "--config", str(config)],
        capture_output=True, text=True, timeout=400, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = tomllib.loads((out / "config.toml").read_text())
    assert [written[k] for k in ("backend", "task", "episodes", "envs_per_sim")] == ["null", "reach", 2, 2]
    assert written["task_options"] == {"max_steps": 24} and written["worker"]["batch"]["max_wait_ms"] == 2.0
    assert written["mode"] == "embedded" and "url" not in written["redis"]  # the embedded Redis is the run's own
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["config"]["backend"] == "null"
    assert summary["config"]["worker"]["batch"]["max_wait_ms"] == 2.0
    # the written file runs the same evaluation again
    again = subprocess.run([sys.executable, "-m", "rolloutq.controller", "config", "show", "--config",
                            str(out / "config.toml")], capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr
    assert tomllib.loads(again.stdout) == written


def test_the_console_shows_rolloutq_only_and_its_progress_agrees_with_the_summary(tmp_path):
    """What a user sees: no Ray or Serve lines (token-auth notice, Serve's progress, the raylet's
    shutdown errors) without --verbose, and the last progress line's rates are the summary's."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUTQ_")}
    env["COLUMNS"] = "200"  # the whole progress line on one row
    proc = subprocess.run(
        [sys.executable, "-m", "rolloutq.controller", "eval", "--backend", "null", "--task", "reach", "--episodes", "4",
         "--task-option", "max_steps=40", "--out", str(out), "--set", "video_episodes=0"],
        capture_output=True, text=True, timeout=400, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = proc.stdout + proc.stderr
    for noise in ("Token authentication", "Started Serve", "is ready at http", "raylet", "Traceback",
                  "OpenGL.acceleratesupport"):
        assert noise not in seen, noise
    summary = json.loads((out / "summary.json").read_text())
    rates = re.findall(r"\| ([0-9.]+) env steps/s \| ([0-9.]+) policy calls/s", proc.stderr)
    assert rates, proc.stderr[-2000:]
    steps_s, calls_s = (float(x) for x in rates[-1])
    # the same numbers (steps and calls over the time since the first episode started), read a moment apart
    assert abs(steps_s - summary["env_steps_per_s"]) <= 0.15 * summary["env_steps_per_s"], (rates[-1], summary)
    assert abs(calls_s - summary["policy_calls_per_s"]) <= 0.15 * summary["policy_calls_per_s"] + 0.5
