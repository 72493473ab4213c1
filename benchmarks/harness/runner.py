"""Runs a scenario's phases in order (A, then each B, then each C) and collects their figures.

A phase that fails is recorded with its error and the rest still run: a long GPU run keeps what
it measured. `on_progress` gets the results so far after each phase (partial records).
"""

from __future__ import annotations

import gc
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from benchmarks.harness.gpu import GpuSampler
from benchmarks.harness.load import LoadSpec, run_load
from benchmarks.harness.model import ModelUnderTest
from benchmarks.harness.scenario import ReferencePhase, RolloutqRun, Scenario
from benchmarks.harness.stats import ratios, summarise
from benchmarks.harness.systems import ReferenceServer, RolloutqWorker, WorkerCounts, worker_settings

START_DELAY_S = 2.0  # the load's processes start (spawn, imports) before the rollouts do


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


class ScenarioRunner:
    def __init__(self, scenario: Scenario, redis_server: str | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.s = scenario
        self.redis_server = redis_server
        self.on_progress = on_progress or (lambda _results: None)
        self.gpu = GpuSampler()
        self.model: ModelUnderTest | None = None  # kept when [model] beside = true
        self.results: dict[str, Any] = {"description": scenario.description, "policy": asdict(scenario.policy),
                                        "load": asdict(scenario.load)}

    def run(self) -> dict[str, Any]:
        if self.s.model is not None:
            self._phase("model", self._model_phase)
        for ref in self.s.reference:
            self._phase("reference", lambda ref=ref: self._reference_phase(ref), many=True)
        for run in self.s.rolloutq:
            self._phase("rolloutq", lambda run=run: self._rolloutq_phase(run), many=True)
        self.gpu.stop()
        self._compare()
        return self.results

    def _phase(self, key: str, fn: Callable[[], dict[str, Any]], many: bool = False) -> None:
        t = time.perf_counter()
        try:
            out = fn()
        except Exception as e:
            out = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
            log(f"{key} failed: {out['trace']}")
        out["phase_s"] = round(time.perf_counter() - t, 1)
        if many:
            self.results.setdefault(key, []).append(out)
        else:
            self.results[key] = out
        self.on_progress(self.results)

    def _model_phase(self) -> dict[str, Any]:
        spec = self.s.model
        model = ModelUnderTest(self.s.policy, spec.graphs).load()
        log(f"A: {model.describe()}")
        rows = []
        for b in spec.sizes:
            t0 = time.time()
            row = {**model.time(b, spec.warmup, spec.reps)}
            row.update(self.gpu.window(t0, time.time()))
            rows.append(row)
            log(f"A: B={b:4d} median {row['median_ms']:8.1f} ms  {row['chunks_per_s']:7.1f} chunks/s")
        described = model.describe()
        if spec.beside:
            self.model = model
        else:
            del model
            gc.collect()
        out = {"graphs": spec.graphs, **described, "rows": rows}
        if spec.graphs and spec.eager_too:
            eager = ModelUnderTest(self.s.policy, graphs=False).load()
            out["eager_rows"] = [eager.time(b, spec.warmup, spec.reps) for b in spec.sizes]
            for row, ref in zip(rows, out["eager_rows"], strict=True):
                row["gain_over_eager"] = round(ref["median_ms"] / row["median_ms"], 2)
                log(f"A: B={row['batch']:4d} eager {ref['median_ms']:8.1f} ms: captured is {row['gain_over_eager']}x")
            del eager
            gc.collect()
        return out

    def _window(self, ns: int) -> tuple[float, float, float]:
        start = time.time() + START_DELAY_S
        t0 = start + ns
        return start, t0, t0 + self.s.load.window_s

    def _reference_phase(self, ref: ReferencePhase) -> dict[str, Any]:
        server = ReferenceServer(self.s.policy, ref.graphs, self.s.gpus)
        ready_s = server.start()
        log(f"B[{ref.name}]: replica ready in {ready_s:.1f}s")
        rows = []
        try:
            for n in ref.ns:
                warm = float(ref.warmup_s.get(str(n), self.s.load.warmup_s))
                start, t0, t1 = self._window(warm)
                spec = self._load_spec("reference", server.url, n, start, t1 - start, f"b{int(start)}")
                calls, steps = run_load(spec)
                row = {"n": n, "warmup_s": warm, **summarise(calls, steps, t0, t1), **self.gpu.window(t0, t1)}
                rows.append(row)
                log(f"B[{ref.name}]: N={n:3d} {row['env_steps_per_s']:8.1f} env steps/s "
                    f"p50 {row['rt_p50_ms']} p99 {row['rt_p99_ms']} ms")
        finally:
            server.stop()
        return {"name": ref.name, "graphs": ref.graphs, "replica_ready_s": round(ready_s, 1), "rows": rows}

    def _rolloutq_phase(self, run: RolloutqRun) -> dict[str, Any]:
        def settings_for(url: str) -> Any:
            return worker_settings(self.s.policy, run.graphs, run.options, url, run.max_batch_size, run.max_wait_ms)

        worker = RolloutqWorker(settings_for, run.mode, self.s.gpus, run.replica_cpus,
                                redis_server=self.redis_server)
        rows = []
        try:
            ready_s = worker.start()
            log(f"C[{run.name}]: worker serving after {ready_s:.1f}s")
            for n in run.ns:
                start, t0, t1 = self._window(self.s.load.warmup_s)
                spec = self._load_spec("rolloutq", worker.url, n, start, t1 - start, f"c{int(start)}",
                                       rows=run.rows_per_request, shared_frames=run.shared_frames,
                                       reply_steps=self.s.load.horizon if run.steps else 0)
                snaps: dict[str, WorkerCounts] = {}
                # the stats hash is refreshed every second: read it 1.2 s after each window edge
                readers = [threading.Thread(target=self._snap, args=(worker, at + 1.2, key, snaps))
                           for at, key in ((t0, "a"), (t1, "b"))]
                for r in readers:
                    r.start()
                calls, steps = run_load(spec)
                for r in readers:
                    r.join()
                row = {"n": n, **summarise(calls, steps, t0, t1), **snaps["b"].since(snaps["a"], t1 - t0),
                       **self.gpu.window(t0, t1)}
                if self.model is not None and row["mean_batch"]:
                    row["A_beside"] = self.model.time(round(row["mean_batch"]), 1, self.s.model.reps)
                rows.append(row)
                log(f"C[{run.name}]: N={n:3d} {row['env_steps_per_s']:8.1f} env steps/s "
                    f"{row['calls_per_s']:7.2f} calls/s (span {row['calls_per_s_span']}) batch {row['mean_batch']} "
                    f"p50 {row['rt_p50_ms']} p99 {row['rt_p99_ms']} ms errors {row['errors']}")
        finally:
            worker.stop()
        return {**asdict(run), "worker_ready_s": round(ready_s, 1), "rows": rows}

    @staticmethod
    def _snap(worker: RolloutqWorker, at: float, key: str, into: dict[str, WorkerCounts]) -> None:
        time.sleep(max(0.0, at - time.time()))
        into[key] = worker.counts()

    def _load_spec(self, target: str, url: str, n: int, start: float, duration: float, run_id: str,
                   **extra: Any) -> LoadSpec:
        ld = self.s.load
        return LoadSpec(target=target, url=url, n=n, procs=ld.procs, step_ms=ld.step_ms, horizon=ld.horizon,
                        paced=ld.paced, duration_s=duration, start_at=start, run_id=run_id, **extra)

    def _compare(self) -> None:
        model_rows = self.results.get("model", {}).get("rows", [])
        refs = self.results.get("reference", [])
        reference = {r["n"]: r for r in refs[0].get("rows", [])} if refs else {}
        for run in self.results.get("rolloutq", []):
            for row in run.get("rows", []):
                row["ratios"] = ratios(row, model_rows, reference)
