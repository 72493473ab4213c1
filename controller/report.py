"""The evaluation report: plots, videos and report.md in the run's results folder.

Written after every `rolloutq eval`: `success_per_seed.png`, `round_trip_ms.png`,
`env_steps_per_s.png`, the GIFs the simulators recorded (`videos/`), and `report.md` tying them
together with the summary table, the per-group table where the task groups its episodes (a LIBERO
suite's tasks) and the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rolloutq.controller.results import outcomes_line  # noqa: E402
from rolloutq.sim_workers.outcomes import OUTCOMES, outcome_of  # noqa: E402

COLORS = {"success": "#2a9d8f", "failure": "#e76f51", "policy_error": "#9b2226", "sim_error": "#7b6cb0",
          "infra": "#e9c46a"}
"""Per outcome: green success; reds for what counts as failure (policy_error the darker); violet for
simulator errors and yellow for infrastructure (neither scored)."""
_MEANING = {"success": "the task succeeded", "failure": "the task ended without success",
            "policy_error": "the policy broke the episode; scored as a failure",
            "sim_error": "the simulator or its adapter failed; not scored",
            "infra": "lost to infrastructure after every attempt; not scored"}


def _plot_success(records: list[dict[str, Any]], path: Path) -> None:
    recs = sorted(records, key=lambda r: r["seed"])
    seeds = [r["seed"] for r in recs]
    colors = [COLORS[outcome_of(r)] for r in recs]
    fig, ax = plt.subplots(figsize=(max(6, len(recs) * 0.12), 2.6))
    ax.bar(range(len(recs)), [1] * len(recs), color=colors, width=0.9)
    ax.set_yticks([])
    step = max(1, len(recs) // 25)
    ax.set_xticks(range(0, len(recs), step), [str(s) for s in seeds[::step]], fontsize=7)
    ax.set_xlabel("seed")
    ax.set_title("outcome per seed (green success, red failure, dark red policy error, violet simulator error, "
                 "yellow infrastructure)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_round_trip(records: list[dict[str, Any]], path: Path) -> None:
    rts = np.array([x for r in records for x in r["round_trip_ms"]])
    fig, ax = plt.subplots(figsize=(6, 3))
    if rts.size:
        ax.hist(rts, bins=min(60, max(10, rts.size // 10)), color="#264653")
        for q, style in ((50, "--"), (99, ":")):
            v = float(np.percentile(rts, q))
            ax.axvline(v, color="#e76f51", linestyle=style, label=f"p{q} {v:.1f} ms")
        ax.legend(fontsize=8)
    ax.set_xlabel("round trip seen by the simulator (ms)")
    ax.set_ylabel("policy calls")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_steps_over_time(records: list[dict[str, Any]], path: Path) -> None:
    """Env steps/s over the run, from each episode's start, duration and step count."""
    fig, ax = plt.subplots(figsize=(6, 3))
    if records:
        t0 = min(r["started_at"] for r in records)
        t1 = max(r["started_at"] + r["wall_s"] for r in records)
        bins = np.linspace(0, max(t1 - t0, 1e-3), 40)
        rate = np.zeros(len(bins) - 1)
        for r in records:
            a, b = r["started_at"] - t0, r["started_at"] - t0 + max(r["wall_s"], 1e-6)
            overlap = np.clip(np.minimum(bins[1:], b) - np.maximum(bins[:-1], a), 0, None)
            rate += overlap * r["steps"] / (b - a)
        width = bins[1] - bins[0]
        ax.plot((bins[:-1] + bins[1:]) / 2, rate / width, color="#2a9d8f")
    ax.set_xlabel("time since first episode started (s)")
    ax.set_ylabel("env steps/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _group_section(table: dict[str, Any]) -> list[str]:
    """summary.json's `groups` as a table: each group's rate with its Wilson interval, and the mean
    of the group rates."""
    lines = ["## Per group", "", "| group | scored episodes | successes | success rate | Wilson 95 % CI | not scored |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, row in table["groups"].items():
        rate = "-" if row["success_rate"] is None else f"{row['success_rate']:.1%}"
        lo, hi = row["success_ci95"]
        lines.append(f"| {name} | {row['episodes']} | {row['successes']} | {rate} | {lo:.1%} – {hi:.1%} | "
                     f"{row['unscored']} |")
    mean = table["mean_group_rate"]
    lines += ["", f"Mean of the group rates: {'-' if mean is None else f'{mean:.1%}'} (each group counts once, "
              "whatever its number of episodes).", ""]
    return lines


def write_report(out: Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    _plot_success(records, out / "success_per_seed.png")
    _plot_round_trip(records, out / "round_trip_ms.png")
    _plot_steps_over_time(records, out / "env_steps_per_s.png")
    videos = sorted((out / "videos").glob("*.gif")) if (out / "videos").exists() else []
    cfg = summary["config"]
    lo, hi = summary["success_ci95"]
    rt = summary["round_trip_ms"]
    pol = summary.get("policy", {})
    lines = [
        f"# Evaluation report: {cfg.get('sweep', {}).get('task', cfg.get('task'))} with "
        f"{pol.get('model_id') or cfg.get('backend')}",
        "",
        "| | |",
        "| --- | --- |",
        f"| scored episodes | {summary['episodes']} of {summary.get('episodes_requested')} requested "
        "(success + failure + policy error) |",
        f"| successes | {summary['successes']} |",
        f"| success rate | {summary['success_rate']:.1%} (Wilson 95 % CI {lo:.1%} – {hi:.1%}) |",
        f"| policy errors (scored as failures) | {summary['policy_errors']} |",
        f"| simulator errors (not scored) | {summary['sim_errors']} |",
        f"| infrastructure failures (not scored) | {summary['infra_failures']} |",
        f"| env steps/s | {summary['env_steps_per_s']} |",
        f"| policy calls/s | {summary['policy_calls_per_s']} |",
        f"| round trip p50 / p90 / p99 | {rt['p50']} / {rt.get('p90')} / {rt['p99']} ms |",
        f"| mean batch size | {summary['mean_batch_size']} |",
        f"| wall time | {summary['wall_s']} s |",
        "",
        "## Outcomes",
        "",
        outcomes_line(summary),
        "",
        "| outcome | episodes | reasons | meaning |",
        "| --- | --- | --- | --- |",
        *[f"| {o} | {summary['outcomes'].get(o, 0)} | "
          + (", ".join(f"{r} {n}" for r, n in sorted(summary["reasons"].get(o, {}).items())) or "-")
          + f" | {_MEANING[o]} |" for o in OUTCOMES],
        "",
        *(_group_section(summary["groups"]) if summary.get("groups") else []),
        "## Outcome per seed",
        "",
        "![success per seed](success_per_seed.png)",
        "",
        "## Latency and throughput",
        "",
        "![round trip](round_trip_ms.png) ![env steps/s](env_steps_per_s.png)",
        "",
    ]
    if videos:
        lines += ["## Camera view", ""]
        lines += [f"![{v.stem}](videos/{v.name})" for v in videos]
        lines.append("")
    lines += ["## Config", "", "```json", json.dumps(cfg, indent=2), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
