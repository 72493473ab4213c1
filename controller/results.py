"""Turning episode records into the run's results: episodes.jsonl, summary.json, a human summary,
and the run's exit status.

Every episode has an outcome (`rolloutq.sim_workers.outcomes`). The success rate and its interval are over
the scored ones: success + failure + policy_error (a policy that breaks an episode fails it).
`sim_error` and `infra` episodes were re-run by the controller; those still there after the last
attempt are counted apart, and sim errors above `--max-sim-errors` make the run exit non-zero.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rolloutq.sim_workers.outcomes import INFRA, OUTCOMES, POLICY_ERROR, SCORED, SIM_ERROR, SUCCESS, outcome_of

EXIT_INCOMPLETE = 5
"""Exit status of `rolloutq eval` when episodes are missing (lost to infrastructure after every attempt)."""
EXIT_SIM_ERRORS = 3
"""Exit status of `rolloutq eval` when more episodes than `--max-sim-errors` ended in `sim_error`."""


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


def count_outcomes(records: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Episodes per outcome (every outcome present, 0 included) and per (outcome, reason)."""
    outcomes = dict.fromkeys(OUTCOMES, 0)
    reasons: dict[str, dict[str, int]] = {}
    for r in records:
        outcome = outcome_of(r)
        outcomes[outcome] += 1
        if reason := r.get("reason"):
            per = reasons.setdefault(outcome, {})
            per[str(reason)] = per.get(str(reason), 0) + 1
    return outcomes, reasons


def summarize(records: list[dict[str, Any]], wall_s: float, worker_stats: dict[str, Any],
              config: dict[str, Any]) -> dict[str, Any]:
    """The run's summary.json. `episodes`, `successes`, `success_rate` and `success_ci95` are over
    the scored episodes (success + failure + policy_error); sim errors and infrastructure losses
    are counted apart (`outcomes`, `reasons`, `sim_errors`, `infra_failures`)."""
    outcomes, reasons = count_outcomes(records)
    scored = sum(outcomes[o] for o in SCORED)
    successes = outcomes[SUCCESS]
    lo, hi = wilson_interval(successes, scored)
    steps = sum(r["steps"] for r in records)
    calls = sum(r["policy_calls"] for r in records)
    rts = [x for r in records for x in r["round_trip_ms"]]
    return {
        "episodes": scored,
        "episodes_requested": config.get("episodes"),
        "outcomes": outcomes,
        "reasons": reasons,
        "infra_failures": outcomes[INFRA],
        "policy_errors": outcomes[POLICY_ERROR],
        "sim_errors": outcomes[SIM_ERROR],
        "successes": successes,
        "success_rate": round(successes / scored, 4) if scored else 0.0,
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


def group_table(records: list[dict[str, Any]], group_of: Callable[[int], str]) -> dict[str, Any]:
    """Success per group of episodes (a LIBERO suite's tasks: the task's `episode_group`), each
    with its Wilson interval, and the mean of the groups' rates (a suite's usual figure). Like the
    run's own rate, over scored episodes; sim errors and infrastructure losses are `unscored`."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(group_of(int(r["seed"])), []).append(r)
    rows = {}
    for name in sorted(groups, key=_natural):
        outcomes, _ = count_outcomes(groups[name])
        n = sum(outcomes[o] for o in SCORED)
        k = outcomes[SUCCESS]
        lo, hi = wilson_interval(k, n)
        rows[name] = {"episodes": n, "successes": k, "success_rate": round(k / n, 4) if n else None,
                      "success_ci95": [round(lo, 4), round(hi, 4)], "unscored": len(groups[name]) - n}
    rates = [row["success_rate"] for row in rows.values() if row["success_rate"] is not None]
    return {"groups": rows, "mean_group_rate": round(sum(rates) / len(rates), 4) if rates else None}


def group_lines(table: dict[str, Any]) -> list[str]:
    """The per-group table as aligned text, for the end-of-run summary."""
    lines = [f"{'group':>10}  {'ok/n':>7}  {'rate':>5}  95% CI"]
    for name, row in table["groups"].items():
        rate = "  -  " if row["success_rate"] is None else f"{row['success_rate']:.2f}"
        lo, hi = row["success_ci95"]
        extra = f"  (+{row['unscored']} unscored)" if row["unscored"] else ""
        lines.append(f"{name:>10}  {row['successes']:>3}/{row['episodes']:<3}  {rate:>5}  [{lo:.2f}, {hi:.2f}]{extra}")
    mean = table["mean_group_rate"]
    lines.append(f"mean of the groups' rates: {'-' if mean is None else f'{mean:.3f}'}")
    return lines


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in name.split())


def write_results(out: Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "episodes.jsonl", "w") as f:
        for r in sorted(records, key=lambda r: r["episode"]):
            f.write(json.dumps(r) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


_NOTES = {POLICY_ERROR: "scored as failures", SIM_ERROR: "not scored", INFRA: "not scored"}


def outcomes_line(summary: dict[str, Any]) -> str:
    """The non-zero outcome counts with their reasons, e.g. `outcomes: failure 3, policy_error 2
    (scored as failures: bad_action 2)`."""
    parts = []
    for outcome in OUTCOMES:
        n = summary["outcomes"].get(outcome, 0)
        if not n:
            continue
        why = ", ".join(f"{reason} {k}" for reason, k in sorted(summary["reasons"].get(outcome, {}).items(),
                                                                 key=lambda kv: -kv[1]))
        note = "; ".join(x for x in (_NOTES.get(outcome, ""), why) if x)
        parts.append(f"{outcome} {n}" + (f" ({note})" if note else ""))
    return "outcomes: " + (", ".join(parts) if parts else "none")


def human_summary(summary: dict[str, Any], out: Path) -> str:
    lo, hi = summary["success_ci95"]
    rt = summary["round_trip_ms"]
    lines = [
        f"{summary['episodes']} scored episodes: {summary['successes']} successes, success rate "
        f"{summary['success_rate']:.1%} (95% CI {lo:.1%}-{hi:.1%})",
        outcomes_line(summary),
        f"{summary['env_steps_per_s']:.1f} env steps/s, {summary['policy_calls_per_s']:.1f} policy calls/s, "
        f"mean batch {summary['mean_batch_size']:.2f}, round trip p50 {_ms(rt['p50'])} / p99 {_ms(rt['p99'])}, "
        f"wall {summary['wall_s']:.1f}s",
        *(group_lines(summary["groups"]) if summary.get("groups") else []),
        f"results: {out / 'summary.json'}, {out / 'episodes.jsonl'}"
        + (f"\nreport: {summary['report']}" if summary.get("report") else ""),
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class RunVerdict:
    """How `rolloutq eval` exits after writing its results: 0, or a code and the one line saying why."""

    exit_code: int
    message: str = ""


def verdict(summary: dict[str, Any], requested: int, max_sim_errors: int) -> RunVerdict:
    """Sim errors above `max_sim_errors` (after every re-run) first: the simulator is failing, and the
    success rate leaves those episodes out. Then episodes neither scored nor allowed as sim errors."""
    sim_errors = summary["sim_errors"]
    if sim_errors > max_sim_errors:
        why = ", ".join(f"{r} {n}" for r, n in sorted(summary["reasons"].get(SIM_ERROR, {}).items()))
        return RunVerdict(EXIT_SIM_ERRORS, f"{sim_errors} episode(s) ended in sim_error after every attempt ({why}), "
                                           f"more than --max-sim-errors {max_sim_errors}: the simulator or its "
                                           "adapter is failing; see 'error' in episodes.jsonl")
    if summary["episodes"] + sim_errors < requested:
        return RunVerdict(EXIT_INCOMPLETE, f"only {summary['episodes']} of {requested} episodes were scored "
                                           f"({summary['infra_failures']} lost to infrastructure after every "
                                           f"attempt, {sim_errors} sim errors)")
    return RunVerdict(0)


def _ms(value: float | None) -> str:
    """A latency for people: `-` when nothing was measured (a run of 0 episodes)."""
    return "-" if value is None else f"{value:g} ms"
