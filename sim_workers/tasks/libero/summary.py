"""The per-task table and the suite aggregate of a LIBERO run, from its episode records.

LIBERO results are reported per task and as the suite's mean, so a run's summary needs the task
of every episode. Records carry only the seed; the task comes back from the same mapping the
simulators used (`protocol.episode_slot`), so the table needs the run's `tasks` and `order`
options, nothing from the simulators. Only scored outcomes (success, failure, policy_error) enter
the rates; sim errors and infrastructure losses are counted beside them, never as failures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from rolloutq.sim_workers.outcomes import SCORED, SUCCESS, outcome_of
from rolloutq.sim_workers.tasks.libero.protocol import episode_slot


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval (the formula of rolloutq.controller.results.wilson_interval; kept here so
    sim_workers does not import the controller)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class TaskRow:
    task_id: int
    instruction: str
    episodes: int
    """Scored episodes (success, failure, policy_error)."""
    successes: int
    success_rate: float | None
    success_ci95: tuple[float, float]
    unscored: int
    """Episodes that ended in sim_error or infra: re-run by the controller, never counted as failures."""


@dataclass
class SuiteTable:
    rows: list[TaskRow]
    episodes: int
    successes: int
    success_rate: float | None
    """Pooled over all scored episodes (equals the mean of per-task rates when every task ran equally
    often, as in the standard 50-per-task run)."""
    success_ci95: tuple[float, float]
    mean_task_rate: float | None
    """The unweighted mean of the per-task rates (tasks with no scored episode left out)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _final(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per episode: the last attempt's (earlier attempts of re-run episodes dropped)."""
    last: dict[int, dict[str, Any]] = {}
    for r in records:
        if "episode" not in r:
            continue
        e = int(r["episode"])
        if e not in last or int(r.get("attempt", 1)) >= int(last[e].get("attempt", 1)):
            last[e] = r
    return list(last.values())


def per_task(records: list[dict[str, Any]], task_ids: tuple[int, ...], order: str = "interleaved",
             instructions: dict[int, str] | None = None) -> SuiteTable:
    """Group episode records (dicts as in episodes.jsonl) by LIBERO task; `task_ids` and `order` are
    the run's task options (`adapter.parse_task_ids` turns the `tasks` option into ids)."""
    counts = {t: [0, 0, 0] for t in task_ids}  # scored, successes, unscored
    for r in _final(records):
        task = episode_slot(int(r["seed"]), task_ids, order).task_id
        outcome = outcome_of(r)
        if outcome in SCORED:
            counts[task][0] += 1
            counts[task][1] += outcome == SUCCESS
        else:
            counts[task][2] += 1
    rows = []
    for t in task_ids:
        n, k, u = counts[t]
        rows.append(TaskRow(t, (instructions or {}).get(t, ""), n, k, round(k / n, 4) if n else None,
                            tuple(round(x, 4) for x in wilson(k, n)), u))
    n = sum(r.episodes for r in rows)
    k = sum(r.successes for r in rows)
    rates = [r.success_rate for r in rows if r.success_rate is not None]
    return SuiteTable(rows, n, k, round(k / n, 4) if n else None, tuple(round(x, 4) for x in wilson(k, n)),
                      round(sum(rates) / len(rates), 4) if rates else None)


def format_table(table: SuiteTable) -> str:
    """The table as aligned text, for the end-of-run summary."""
    lines = [f"{'task':>4}  {'ok/n':>7}  {'rate':>5}  {'95% CI':>13}  instruction"]
    for r in table.rows:
        rate = f"{r.success_rate:.2f}" if r.success_rate is not None else "  -  "
        lo, hi = r.success_ci95
        extra = f"  (+{r.unscored} unscored)" if r.unscored else ""
        lines.append(f"{r.task_id:>4}  {r.successes:>3}/{r.episodes:<3}  {rate:>5}  [{lo:.2f}, {hi:.2f}]  "
                     f"{r.instruction}{extra}")
    rate = f"{table.success_rate:.3f}" if table.success_rate is not None else "-"
    lo, hi = table.success_ci95
    lines.append(f"suite: {table.successes}/{table.episodes} = {rate}, 95% CI [{lo:.3f}, {hi:.3f}]")
    return "\n".join(lines)
