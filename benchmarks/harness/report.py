"""Markdown tables from a harness record, in the columns docs/benchmarks.md uses:
`python -m benchmarks.harness report RECORD.json`."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def model_table(model: dict[str, Any]) -> list[str]:
    out = ["| B | median ms | chunks/s | GPU util % |", "| ---: | ---: | ---: | ---: |"]
    out += [f"| {r['batch']} | {_fmt(r['median_ms'])} | {_fmt(r['chunks_per_s'])} | {_fmt(r.get('gpu_util_pct'))} |"
            for r in model.get("rows", [])]
    return out


def load_table(title: str, rows: list[dict[str, Any]]) -> list[str]:
    out = [f"**{title}**", "",
           "| N | env steps/s | calls/s (span) | mean batch | p50 / p99 ms | C / A span | p99 / A | C / B "
           "| GPU util % |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        q = r.get("ratios", {})
        out.append(f"| {r['n']} | {_fmt(r['env_steps_per_s'])} | {_fmt(r['calls_per_s_span'])} | "
                   f"{_fmt(r.get('mean_batch'))} | {_fmt(r['rt_p50_ms'])} / {_fmt(r['rt_p99_ms'])} | "
                   f"{_fmt(q.get('C_over_A_span'), 3)} | {_fmt(q.get('p99_over_A'), 2)} | "
                   f"{_fmt(q.get('C_over_B_env_steps'), 2)} | {_fmt(r.get('gpu_util_pct'))} |")
    return out


def report(record: dict[str, Any]) -> str:
    res = record["results"]
    lines = [f"{record['scenario']}: revision {record['revision'][:12]}"
             f"{' (dirty)' if record.get('dirty') else ''}, {record['date_utc']}, "
             f"{record['machine'].get('gpu') or record['machine'].get('host')}", f"`{record['command']}`", ""]
    if "model" in res:
        lines += ["**A: the model alone**", "", *model_table(res["model"]), ""]
    for part in ("reference", "rolloutq"):
        for run in res.get(part, []):
            if "error" in run:
                lines += [f"**{run.get('name', part)}**: failed: {run['error']}", ""]
            else:
                lines += [*load_table(f"{'B' if part == 'reference' else 'C'}: {run['name']}", run["rows"]), ""]
    return "\n".join(lines)
