"""Statistics of a measurement window: rates, percentiles and the ratios the docs report.

Calls are counted by the clients inside the window. At N = 64 and a 10 s window, counting calls
moves in steps of one batch (~0.02 of C / A), so the per-rollout rate (`calls_per_s_span`: each
rollout's own calls over its own first-to-last span, summed) is reported beside it; the docs'
C / A figures use it.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from benchmarks.harness.load import Call, StepBatch


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def span_rate(calls: Iterable[Call]) -> float | None:
    """Sum over rollouts of (calls - 1) / (last - first answer); a request of K rows counts K."""
    times: dict[int, list[float]] = {}
    rows: dict[int, int] = {}
    for c in calls:
        times.setdefault(c.sim, []).append(c.answered)
        rows[c.sim] = c.rows
    rates = [rows[s] * (len(ts) - 1) / (max(ts) - min(ts)) for s, ts in times.items()
             if len(ts) >= 2 and max(ts) > min(ts)]
    return round(sum(rates), 2) if rates else None


def summarise(calls: list[Call], steps: list[StepBatch], t0: float, t1: float) -> dict[str, Any]:
    """The window [t0, t1] (wall clock) of one load run."""
    win = t1 - t0
    ok = [c for c in calls if t0 <= c.answered <= t1 and c.error is None]
    errors = [c for c in calls if t0 <= c.answered <= t1 and c.error is not None]
    rts = [c.round_trip_ms for c in ok]
    return {
        "window_s": round(win, 2),
        "env_steps_per_s": round(sum(s.steps for s in steps if t0 <= s.done <= t1) / win, 2),
        "calls_per_s": round(sum(c.rows for c in ok) / win, 2),
        "calls_per_s_span": span_rate(ok),
        "requests_per_s": round(len(ok) / win, 2),
        "errors": len(errors),
        "first_error": errors[0].error if errors else None,
        "rt_p50_ms": percentile(rts, 0.5),
        "rt_p99_ms": percentile(rts, 0.99),
        "rt_mean_ms": round(statistics.fmean(rts), 2) if rts else None,
        "reply_batch_mean": round(statistics.fmean(c.batch for c in ok), 2) if ok else None,
    }


def interpolate(rows: list[dict[str, Any]], batch: float, key: str) -> float | None:
    """The model's `key` at a batch size between those timed (linear)."""
    pts = sorted((r["batch"], r[key]) for r in rows)
    if not pts:
        return None
    if batch <= pts[0][0]:
        return pts[0][1]
    for (b0, v0), (b1, v1) in zip(pts, pts[1:], strict=False):
        if b0 <= batch <= b1:
            return v0 + (v1 - v0) * (batch - b0) / (b1 - b0)
    return pts[-1][1]


def ratios(row: dict[str, Any], model_rows: list[dict[str, Any]],
           reference: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """C against A at C's batch size (throughput and p99 latency) and against B at the same N."""
    out: dict[str, Any] = {}
    ref = reference.get(row["n"])
    if ref and ref.get("env_steps_per_s"):
        out["C_over_B_env_steps"] = round(row["env_steps_per_s"] / ref["env_steps_per_s"], 2)
    batch = row.get("mean_batch") or row.get("reply_batch_mean")
    if model_rows and batch:
        a_rate = interpolate(model_rows, batch, "chunks_per_s")
        a_ms = interpolate(model_rows, batch, "median_ms")
        out["A_chunks_per_s_at_C_batch"] = round(a_rate, 2)
        out["A_ms_at_C_batch"] = round(a_ms, 2)
        out["C_over_A"] = round(row["calls_per_s"] / a_rate, 3)
        if row.get("calls_per_s_span"):
            out["C_over_A_span"] = round(row["calls_per_s_span"] / a_rate, 3)
        if row.get("rt_p99_ms"):
            out["p99_over_A"] = round(row["rt_p99_ms"] / a_ms, 2)
    beside = row.get("A_beside")
    if beside and row.get("calls_per_s_span"):
        out["C_over_A_beside_span"] = round(row["calls_per_s_span"] / beside["chunks_per_s"], 3)
    return out
