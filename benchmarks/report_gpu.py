"""Markdown tables from a gpu_bench.py result file: `python benchmarks/report_gpu.py RESULT.json`."""

from __future__ import annotations

import json
import sys
from typing import Any


def fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def table_a(res: dict[str, Any]) -> str:
    rows = res.get("A", {}).get("rows", [])
    out = [
        "| B | path | median ms | chunks/s | eager split: backbone ms | eager split: action head ms | peak GiB | "
        "GPU util % |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        sp = r.get("split_ms") or {}
        out.append(
            f"| {r['batch']} | {r.get('path') or 'eager'} | {fmt(r['median_ms'])} | {fmt(r['chunks_per_s'])} | "
            f"{fmt(sp.get('backbone'))} | {fmt(sp.get('action_head'))} | {fmt(r['peak_mem_gib'], 2)} | "
            f"{fmt(r['gpu_util_pct'])} |"
        )
    return "\n".join(out)


def table_runs(res: dict[str, Any], only: list[str] | None = None) -> str:
    out = [
        "| design | N | env steps/s | policy calls/s | mean batch (per batch / per request) | round trip p50 ms | "
        "p99 ms | worker queue p50 ms | worker infer p50 ms | GPU util % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    parts: list[tuple[str, dict]] = []
    if "B" in res and "rows" in res["B"]:
        parts.append(("B reference", res["B"]))
    if "Bg" in res and "rows" in res["Bg"]:
        parts.append(("Bg reference, captured network", res["Bg"]))
    for run in res.get("C", {}).get("runs", []):
        if "rows" not in run:
            continue
        name = (
            f"C {run['mode']} mb{run.get('max_batch_size', 64)}"
            f"{' +graphs(' + (run.get('cuda_graph_scope') or 'head') + ')' if run.get('cuda_graphs') else ''}"
            f"{' +shm' if run.get('shared_frames') else ''}"
            f"{' +stage' if run.get('staged_requests') else ''}"
            f"{' +vec' + str(run['rows_per_request']) if run.get('rows_per_request', 1) > 1 else ''}"
            f"{' +steps' if run.get('reply_steps') else ''}{' +views' if run.get('frame_views') else ''}"
            f"{' +paced' if run.get('paced_steps') else ''}"
            f"{' +poll' + format(run['worker_poll_ms'], 'g') if run.get('worker_poll_ms') else ''}"
            f"{' +cpoll' + format(run['client_poll_ms'], 'g') if run.get('client_poll_ms') else ''}"
            f"{' +cohort*' if run.get('cohort_batcher_merge_wait_ms') else ''}"
        )
        parts.append((name, run))
    for name, part in parts:
        if only and not any(name.startswith(o) for o in only):
            continue
        for r in part["rows"]:
            out.append(
                f"| {name} | {r['n']} | {fmt(r['env_steps_per_s'])} | {fmt(r['policy_calls_per_s'], 2)} | "
                f"{fmt(r.get('mean_batch_size'))} / {fmt(r.get('request_weighted_batch'))} | {fmt(r['rt_p50_ms'])} | "
                f"{fmt(r['rt_p99_ms'])} | {fmt(r.get('worker_queue_p50_ms'))} | {fmt(r.get('worker_infer_p50_ms'))} | "
                f"{fmt(r['gpu_util_pct'])} |"
            )
    return "\n".join(out)


def table_compare(res: dict[str, Any]) -> str:
    out = [
        "| C run | N | C/B env steps | C/Bg env steps | C batch | A chunks/s at that batch | C/A throughput | "
        "C/A, per-rollout span | A ms at that batch | C p99 / A ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, per_n in res.get("compare", {}).items():
        if not key.startswith("C["):
            continue
        for n, o in per_n.items():
            out.append(
                f"| {key} | {n} | {fmt(o.get('C_over_B_env_steps'), 2)} | {fmt(o.get('C_over_Bg_env_steps'), 2)} | "
                f"{fmt(o.get('C_batch'))} | "
                f"{fmt(o.get('A_chunks_per_s_at_C_batch'))} | {fmt(o.get('C_over_A_throughput'), 2)} | "
                f"{fmt(o.get('C_over_A_throughput_span'), 3)} | "
                f"{fmt(o.get('A_ms_at_C_batch'))} | {fmt(o.get('C_p99_over_A_ms'), 2)} |"
            )
    return "\n".join(out)


def main() -> None:
    res = json.load(open(sys.argv[1]))
    m = res["machine"]
    print(f"machine: {m.get('nvidia_smi')}; torch {m.get('torch')}, transformers {m.get('transformers')}, "
          f"lerobot {m.get('lerobot')}, ray {m.get('ray')}; {m.get('date_utc')}\n")
    print(table_a(res), "\n")
    print(table_runs(res), "\n")
    print(table_compare(res))
    for key in ("capture", "diag"):
        if res.get("A", {}).get(key):
            print(f"\n{key}: {json.dumps(res['A'][key])}")


if __name__ == "__main__":
    main()
