"""Cost of the metric calls the hot paths make, per backend (microbenchmark).

Per batch a policy worker calls `observe_batch` once and `count_request` once; per policy query
a simulator calls `observe_round_trip`, `env_steps` and `tick`. This times those calls in a loop:

    python -m benchmarks.metrics_hotpath [--batch 8] [--n 20000] [--ray]
"""

from __future__ import annotations

import argparse
import statistics
import time

from rolloutq.monitoring.metrics import sim_metrics, worker_metrics


def time_calls(fn, n: int, repeats: int = 5) -> float:
    """Median over `repeats` of the mean seconds per call of fn() over n calls."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n)
    return statistics.median(out)


def bench(backend: str, batch: int, n: int) -> tuple[float, float]:
    w = worker_metrics("bench", f"w-{backend}", backend=backend)
    s = sim_metrics(f"s-{backend}", "bench", backend=backend)
    q = [0.003] * batch

    def per_batch():
        w.observe_batch(batch, q, 0.05, 0.0002, 0.0001)
        w.count_request("ok", batch)
        w.tick()

    def per_query():
        s.observe_round_trip(0.06)
        s.env_steps(8)
        s.tick()

    return time_calls(per_batch, n), time_calls(per_query, n)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--ray", action="store_true", help="Also time the Ray backend (starts Ray).")
    a = ap.parse_args(argv)
    backends = ["off", "prometheus"]
    if a.ray:
        import ray

        ray.init(num_cpus=1, include_dashboard=False, configure_logging=False)
        backends.append("ray")
    print(f"batch size {a.batch}, {a.n} calls x 5 repeats, median of means")
    print(f"{'backend':<12}{'worker, per batch':>20}{'sim, per query':>18}")
    for b in backends:
        wb, sq = bench(b, a.batch, a.n)
        print(f"{b:<12}{wb * 1e6:>17.2f} µs{sq * 1e6:>15.2f} µs")


if __name__ == "__main__":
    main()
