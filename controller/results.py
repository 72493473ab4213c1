"""Turning episode records into the run's results: episodes.jsonl, summary.json, a human summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate (sane at 0 % and 100 %, unlike the normal one)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def summarize(records: list[dict[str, Any]], wall_s: float, worker_stats: dict[str, Any],
              config: dict[str, Any]) -> dict[str, Any]:
    """The run's summary.json. Episodes that ended for infrastructure reasons are counted apart and
    never as policy failures: success_rate is over completed episodes."""
    done = [r for r in records if r["status"] == "ok"]
    infra = [r for r in records if r["status"] != "ok"]
    successes = sum(1 for r in done if r["success"])
    lo, hi = wilson_interval(successes, len(done))
    steps = sum(r["steps"] for r in records)
    calls = sum(r["policy_calls"] for r in records)
    rts = [x for r in records for x in r["round_trip_ms"]]
    return {
        "episodes": len(done),
        "episodes_requested": config.get("episodes"),
        "infra_failures": len(infra),
        "successes": successes,
        "success_rate": round(successes / len(done), 4) if done else 0.0,
        "success_ci95": [round(lo, 4), round(hi, 4)],
        "wall_s": round(wall_s, 3),
        "env_steps": steps,
        "env_steps_per_s": round(steps / wall_s, 2) if wall_s > 0 else 0.0,
        "policy_calls": calls,
        "policy_calls_per_s": round(calls / wall_s, 2) if wall_s > 0 else 0.0,
        "round_trip_ms": {"p50": percentile(rts, 50), "p90": percentile(rts, 90), "p99": percentile(rts, 99)},
        "mean_batch_size": worker_stats.get("mean_batch_size", 0.0),
        "policy": worker_stats,
        "config": config,
    }


def write_results(out: Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "episodes.jsonl", "w") as f:
        for r in sorted(records, key=lambda r: r["episode"]):
            f.write(json.dumps(r) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def human_summary(summary: dict[str, Any], out: Path) -> str:
    lo, hi = summary["success_ci95"]
    rt = summary["round_trip_ms"]
    lines = [
        f"{summary['episodes']} episodes: {summary['successes']} successes, success rate "
        f"{summary['success_rate']:.1%} (95% CI {lo:.1%}-{hi:.1%})"
        + (f"; {summary['infra_failures']} infrastructure failures" if summary["infra_failures"] else ""),
        f"{summary['env_steps_per_s']:.1f} env steps/s, {summary['policy_calls_per_s']:.1f} policy calls/s, "
        f"mean batch {summary['mean_batch_size']:.2f}, round trip p50 {rt['p50']} ms / p99 {rt['p99']} ms, "
        f"wall {summary['wall_s']:.1f}s",
        f"results: {out / 'summary.json'}, {out / 'episodes.jsonl'}"
        + (f"\nreport: {summary['report']}" if summary.get("report") else ""),
    ]
    return "\n".join(lines)
