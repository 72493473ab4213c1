"""Figures of one (system, N) run from its rollouts' logs, computed the same way for both systems,
and the side-by-side table.

- `env_steps_per_s`: the sum over rollouts of each rollout's steps over its own span (first
  observation to last step), i.e. the rate while the rollouts run; rollouts of mixed speeds end at
  different times, so `makespan_steps_per_s` (all steps over first observation to last step of
  any rollout) is reported beside it.
- `rt_p50_ms` / `rt_p90_ms`: over every policy call of every rollout, as the simulator timed it.
- `mean_batch`: calls / batches, where a call served in a batch of B counts 1/B of a batch (the
  server's own items-per-batch, recovered from what the replies say).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from benchmarks.harness.stats import percentile
from benchmarks.slow_sims.env import RolloutLog


def summarise(logs: list[RolloutLog], n: int) -> dict[str, Any]:
    calls = [rt for log in logs for rt in log.rt_ms]
    batches = [b for log in logs for b in log.batch if b > 0]
    spans = [(log.steps, log.last_step - log.first_obs) for log in logs if log.steps and log.last_step > log.first_obs]
    start = min((log.first_obs for log in logs), default=0.0)
    end = max((log.last_step for log in logs), default=0.0)
    by_cost: dict[float, list[float]] = defaultdict(list)
    for log in logs:
        by_cost[log.base_ms].extend(log.rt_ms)
    return {
        "n": n,
        "rollouts_done": len(logs),
        "steps": sum(log.steps for log in logs),
        "env_steps_per_s": round(sum(s / t for s, t in spans), 2) if spans else None,
        "makespan_steps_per_s": round(sum(log.steps for log in logs) / (end - start), 2) if end > start else None,
        "makespan_s": round(end - start, 2),
        "rt_p50_ms": percentile(calls, 0.5),
        "rt_p90_ms": percentile(calls, 0.9),
        "rt_p99_ms": percentile(calls, 0.99),
        "mean_batch": round(len(batches) / sum(1 / b for b in batches), 2) if batches else None,
        "rt_p50_ms_by_base_cost": {f"{k:g}": percentile(v, 0.5) for k, v in sorted(by_cost.items())},
    }


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _cell(row: dict[str, Any], key: str) -> str:
    error = row.get("error")
    if error:
        return "not run" if error.startswith("not run") else "failed"
    return _fmt(row.get(key))


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per N, the two systems side by side."""
    by_n: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        by_n[row["n"]][row["system"]] = row
    head = ("| N | env steps/s rolloutq | vla-eval | RT p50 ms rolloutq | vla-eval | RT p90 ms rolloutq | vla-eval "
            "| mean batch rolloutq | vla-eval |")
    lines = [head, "|" + "---|" * 9]
    for n in sorted(by_n):
        rq, ve = by_n[n].get("rolloutq", {}), by_n[n].get("vla-eval", {})
        cells = [str(n)]
        for key in ("env_steps_per_s", "rt_p50_ms", "rt_p90_ms", "mean_batch"):
            cells += [_cell(rq, key), _cell(ve, key)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
