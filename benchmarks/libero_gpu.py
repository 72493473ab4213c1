"""LIBERO simulators against the GR00T N1.7 network (random weights) through rolloutq, for a fixed time.

The first end-to-end figure with a real benchmark's simulator (issue 23 §4): S simulator processes,
each hosting K LIBERO envs of one task (rolloutq's `libero` task, `VectorAdapter`, cameras rendered
where MUJOCO_GL says: EGL on the GPU machine), run the product's closed loop (`run_vector`: the K
envs ask in one request of K rows, execute 8 steps of each chunk, episodes restart from the suite's
initial states) against one plain policy worker serving the gr00t backend in the LIBERO layout
(`mode="n17-random"`, `embodiment="libero"`) from its own redis-server. Each `--configs` entry (SxK)
runs a warm-up and then a measured window with the same worker; the record gives env steps/s, policy
calls/s, round trips, the worker's batch size and busy share, and the GPU's utilisation over the
window (NVML: the whole device, policy and rendering together; per process where the driver reports
it).

Each sim process runs one task of the suite (sim i: task i mod 10), so its envs build their scene
once (~5-8 s each, before the window) and never rebuild; all episodes run until the suite's step
limit or success. Settle steps after each reset are simulated but not counted as env steps.

    python -m benchmarks.libero_gpu --configs 14x4 --warmup-s 30 --window-s 60 --out $OUT/libero-gpu.json
    python -m benchmarks.libero_gpu --stand-in --configs 2x2 --gpus 0 --device cpu ...   # CPU check

`--stand-in` serves the labelled timing double (`benchmarks.libero_policy.SleepPolicy`) behind the same
backend instead of the network.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.harness.gpu import GpuSampler
from benchmarks.harness.load import POLICY, Call, StepBatch
from benchmarks.harness.model import PolicySpec
from benchmarks.harness.record import make_record, write_record
from benchmarks.harness.stats import summarise
from benchmarks.harness.systems import RolloutqWorker, WorkerCounts, worker_settings

BACKEND = "gr00t"
LAYOUT = {"mode": "n17-random", "embodiment": "libero"}
GRAPH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 128)


@dataclass(frozen=True)
class SimConfig:
    index: int
    url: str
    suite: str
    task: int
    envs: int
    rows: int  # rows per request (0: one request per env)
    horizon: int
    shared_frames: bool


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


# ------------------------------------------------------------------------------------------------
# A simulator process
# ------------------------------------------------------------------------------------------------


def _gl_renderer() -> str:
    """The OpenGL renderer of the context current on this thread (the one the cameras drew with)."""
    try:
        from OpenGL import GL

        return " / ".join(GL.glGetString(k).decode() for k in (GL.GL_VENDOR, GL.GL_RENDERER))
    except Exception as e:
        return f"unknown ({type(e).__name__}: {e})"


def _build(cfg: SimConfig) -> tuple[Any, str]:
    """The K envs with their scene built and one frame drawn (so the window measures no builds)."""
    from rolloutq.sim_workers.tasks.libero import VectorAdapter

    venv = VectorAdapter(suite=cfg.suite, num_envs=cfg.envs, tasks=[cfg.task])
    venv.reset(list(range(cfg.envs)), list(range(cfg.envs)))
    venv.observe([0])
    return venv, _gl_renderer()


def _client_class() -> type:
    from rolloutq.broker.client import PolicyClient

    class RecordingClient(PolicyClient):
        """The product's client, noting each request's answer as a `Call` (rows per request included)."""

        def __init__(self, *args: Any, sim: int, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.sim, self.calls, self._ids = sim, [], {}

        async def act_many(self, items: Any, steps: int = 0) -> Any:
            results = await super().act_many(items, steps)
            now = time.time()
            for (rollout, obs), res in zip(items, results, strict=True):
                rows = len(obs.get("annotation.human.task_description", [[0]]))
                sim = self.sim * 100_000 + self._ids.setdefault(rollout, len(self._ids))
                if isinstance(res, Exception):
                    self.calls.append(Call(now, 0.0, 0, sim, rows, f"{type(res).__name__}: {res}"[:200]))
                else:
                    self.calls.append(Call(now, res.round_trip_ms, res.batch, sim, rows))
            return results

    return RecordingClient


async def _simulate(cfg: SimConfig, clock: Any, ready: Any, results: Any) -> None:
    from rolloutq.broker.connection import connect_async
    from rolloutq.broker.settings import ClientSettings, RedisSettings
    from rolloutq.broker.sweep import EpisodeSpec
    from rolloutq.sim_workers.vector import run_vector

    pool = ThreadPoolExecutor(1, thread_name_prefix=f"libero-{cfg.index}")  # renderers are thread-bound
    loop = asyncio.get_running_loop()
    t = time.perf_counter()
    venv, renderer = await loop.run_in_executor(pool, _build, cfg)
    ready.put((cfg.index, round(time.perf_counter() - t, 1), renderer))
    while clock[0] == 0.0:
        await asyncio.sleep(0.05)
    start_at, stop_at = clock[0], clock[1]
    redis = connect_async(RedisSettings(url=cfg.url))
    client = _client_class()(redis, POLICY, settings=ClientSettings(shared_frames=cfg.shared_frames,
                                                                   reply_timeout_s=60, deadline_s=300),
                             sim=cfg.index)
    meta = await client.metadata(wait_s=30)
    steps: list[StepBatch] = []
    episodes: list[dict[str, Any]] = []
    taken = 0

    async def take() -> EpisodeSpec | None:
        nonlocal taken
        if time.time() >= stop_at:
            return None
        taken += 1
        return EpisodeSpec(episode=taken, seed=taken - 1)

    def on_episode(record: Any) -> None:
        episodes.append({"outcome": record.outcome, "steps": record.steps, "ended": time.time()})

    await asyncio.sleep(max(0.0, start_at - time.time()))
    run = asyncio.create_task(run_vector(
        venv, client, take, cfg.horizon, rollout_prefix=f"s{cfg.index}",
        on_steps=lambda n: steps.append(StepBatch(time.time(), n)), on_episode=on_episode, close=False,
        executor=pool, rows_per_request=cfg.rows, action_schema=meta.get("action_schema")))
    await asyncio.wait({run}, timeout=max(0.0, stop_at - time.time()))
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    error = None if run.cancelled() or run.exception() is None else repr(run.exception())
    await loop.run_in_executor(pool, venv.close)
    pool.shutdown(wait=True)
    await redis.aclose()
    results.put((cfg.index, client.calls, steps, episodes, error))


def _sim_main(cfg: SimConfig, clock: Any, ready: Any, results: Any) -> None:
    try:
        asyncio.run(_simulate(cfg, clock, ready, results))
    except Exception as e:  # the driver waits for every simulator: say why this one will not come
        ready.put((cfg.index, -1.0, f"failed: {type(e).__name__}: {e}"))
        results.put((cfg.index, [], [], [], f"{type(e).__name__}: {e}"))
        raise


# ------------------------------------------------------------------------------------------------
# Per-process GPU utilisation (NVML, where the driver reports it)
# ------------------------------------------------------------------------------------------------


class ProcessUtil:
    """NVML's per-process SM utilisation samples, polled every 0.5 s; None where unsupported."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, float, int]] = []  # (pid, wall clock, sm %)
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML, no GPU
            self.available = False
            return
        try:
            pynvml.nvmlDeviceGetProcessUtilization(handle, 0)
        except pynvml.NVMLError_NotFound:  # no samples yet: supported
            pass
        except Exception:
            self.available = False
            return
        self.available = True
        threading.Thread(target=self._run, args=(pynvml, handle), daemon=True, name="nvml-proc").start()

    def _run(self, nvml: Any, handle: Any) -> None:
        last = 0
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                for s in nvml.nvmlDeviceGetProcessUtilization(handle, last):
                    last = max(last, s.timeStamp)
                    self.samples.append((s.pid, s.timeStamp / 1e6, s.smUtil))
            time.sleep(0.5)

    def window(self, t0: float, t1: float, sim_pids: set[int]) -> dict[str, Any] | None:
        """Mean SM % over each process's samples in the window, summed for the policy and the sims."""
        if not self.available:
            return None
        per: dict[int, list[int]] = {}
        for pid, at, sm in self.samples:
            if t0 <= at <= t1:
                per.setdefault(pid, []).append(sm)
        means = {pid: sum(v) / len(v) for pid, v in per.items()}
        return {"policy_sm_pct": round(sum(m for p, m in means.items() if p not in sim_pids), 1),
                "sims_sm_pct": round(sum(m for p, m in means.items() if p in sim_pids), 1),
                "samples": sum(len(v) for v in per.values()),
                "note": "NVML per-process SM utilisation, mean over each process's samples"}

    def stop(self) -> None:
        self._stop.set()


# ------------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------------


def _snap(worker: RolloutqWorker, at: float, key: str, into: dict[str, WorkerCounts]) -> None:
    time.sleep(max(0.0, at - time.time()))
    into[key] = worker.counts()  # the stats hash is refreshed every second


def measure(worker: RolloutqWorker, sims: int, envs: int, args: argparse.Namespace, gpu: GpuSampler,
            procs: ProcessUtil) -> dict[str, Any]:
    """One SxK configuration: build, warm up, measure a window, stop."""
    ctx = mp.get_context("spawn")
    clock, ready, results = ctx.Array("d", 2), ctx.Queue(), ctx.Queue()
    rows = envs if args.rows < 0 else args.rows
    configs = [SimConfig(i, worker.url, args.suite, (args.first_task + i) % args.tasks_in_suite, envs, rows,
                         args.action_horizon, not args.no_shared_frames) for i in range(sims)]
    workers = [ctx.Process(target=_sim_main, args=(c, clock, ready, results), daemon=True) for c in configs]
    t = time.perf_counter()
    for p in workers:
        p.start()
    built = [ready.get(timeout=args.build_timeout_s) for _ in workers]
    failed = [b for b in built if b[1] < 0]
    if failed:
        clock[0], clock[1] = time.time(), time.time()
        raise RuntimeError(f"{len(failed)} simulator(s) failed to build: {failed[0][2]}")
    build_s = round(time.perf_counter() - t, 1)
    start = time.time() + 1.0
    t0 = start + args.warmup_s
    t1 = t0 + args.window_s
    clock[1], clock[0] = t1 + 0.5, start
    log(f"{sims}x{envs}: {sims * envs} envs built in {build_s}s; renderer {built[0][2]!r}; window "
        f"{args.warmup_s:.0f}s + {args.window_s:.0f}s")
    snaps: dict[str, WorkerCounts] = {}
    readers = [threading.Thread(target=_snap, args=(worker, at + 1.2, key, snaps))
               for at, key in ((t0, "a"), (t1, "b"))]
    for r in readers:
        r.start()
    calls: list[Call] = []
    steps: list[StepBatch] = []
    episodes: list[dict[str, Any]] = []
    errors = []
    for _ in workers:
        _, c, s, e, err = results.get(timeout=args.warmup_s + args.window_s + 600)
        calls += c
        steps += s
        episodes += e
        if err:
            errors.append(err)
    for r in readers:
        r.join()
    for p in workers:
        p.join(timeout=60)
    row = {"sims": sims, "envs_per_sim": envs, "envs": sims * envs, "rows_per_request": rows,
           "tasks": sorted({c.task for c in configs}), "build_s": build_s,
           "sim_build_s": sorted(b[1] for b in built), "renderers": sorted(Counter(b[2] for b in built).items()),
           **summarise(calls, steps, t0, t1), **snaps["b"].since(snaps["a"], t1 - t0), **gpu.window(t0, t1),
           "gpu_per_process": procs.window(t0, t1, {p.pid for p in workers}),
           "episodes_ended_in_run": dict(Counter(e["outcome"] for e in episodes)),
           "episode_steps_mean": round(sum(e["steps"] for e in episodes) / len(episodes), 1) if episodes else None,
           "sim_errors": errors}
    log(f"{sims}x{envs}: {row['env_steps_per_s']} env steps/s, {row['calls_per_s']} policy calls/s, batch "
        f"{row['mean_batch']}, p50 {row['rt_p50_ms']} ms p99 {row['rt_p99_ms']} ms, worker busy "
        f"{row['worker_busy_frac']}, GPU util {row['gpu_util_pct']} %, errors {row['errors']}")
    return row


def published_metadata(url: str) -> dict[str, Any]:
    import redis
    from rolloutq.broker.keys import Keys

    return json.loads(redis.Redis.from_url(url).hget(Keys().policy_meta(POLICY), "metadata") or "{}")


def parse_configs(text: str) -> list[tuple[int, int]]:
    try:
        out = [tuple(int(x) for x in part.lower().split("x")) for part in text.split(",") if part]
    except ValueError:
        out = []
    if not out or any(len(c) != 2 or min(c) < 1 for c in out):
        raise SystemExit(f"--configs {text!r}: give SIMSxENVS entries, e.g. 14x4,8x8")
    return out  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.libero_gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="14x4", help="SIMSxENVS_PER_SIM, comma-separated (default 14x4)")
    ap.add_argument("--suite", default="libero_spatial")
    ap.add_argument("--tasks-in-suite", type=int, default=10, help="sim i runs task (first_task + i) mod this")
    ap.add_argument("--first-task", type=int, default=0)
    ap.add_argument("--rows", type=int, default=-1, help="rows per request (-1: all envs of a sim, 0: one per env)")
    ap.add_argument("--action-horizon", type=int, default=8, help="chunk steps executed before asking again")
    ap.add_argument("--warmup-s", type=float, default=30.0)
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--build-timeout-s", type=float, default=600.0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--gpus", type=float, default=1.0)
    ap.add_argument("--denoising-steps", type=int, default=4)
    ap.add_argument("--no-graphs", action="store_true", help="eager forward (no CUDA graphs)")
    ap.add_argument("--max-batch-size", type=int, default=0, help="default: the largest configuration's env count")
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--no-shared-frames", action="store_true", help="frames through Redis, not shared memory")
    ap.add_argument("--stand-in", action="store_true", help="the labelled timing double, not the network")
    ap.add_argument("--redis-server", default=None)
    ap.add_argument("--out", default=None, help="a .json path or a folder (default benchmarks/out/)")
    args = ap.parse_args(argv)
    configs = parse_configs(args.configs)
    most = max(s * k for s, k in configs)
    options: dict[str, Any] = {**LAYOUT, "device": args.device, "denoising_steps": args.denoising_steps}
    graph_options: dict[str, Any] = {}
    if args.stand_in:
        options["policy_factory"] = "benchmarks.libero_policy:SleepPolicy"
    else:
        options["warmup_batch_sizes"] = sorted({1, min(8, most), most})
        if not args.no_graphs and args.device.startswith("cuda"):
            graph_options = {"cuda_graph_batch_sizes": [b for b in GRAPH_SIZES if b <= most] or [most],
                             "cuda_graph_scope": "forward"}
    policy = PolicySpec(BACKEND, options, graph_options)
    max_batch = args.max_batch_size or most
    gpu, procs = GpuSampler(), ProcessUtil()
    worker = RolloutqWorker(lambda url: worker_settings(policy, bool(graph_options), {}, url, max_batch,
                                                        args.max_wait_ms),
                            "plain", args.gpus, redis_server=args.redis_server)
    results: dict[str, Any] = {"policy": asdict(policy), "suite": args.suite,
                               "settings": {k: v for k, v in vars(args).items() if k != "out"},
                               "mujoco_gl": os.environ.get("MUJOCO_GL"), "rows": []}
    try:
        ready_s = worker.start(timeout_s=900)
        meta = published_metadata(worker.url)
        results["worker_ready_s"] = round(ready_s, 1)
        results["model"] = {k: meta.get(k) for k in ("model_id", "description", "parameters", "chunk_length")}
        results["model"]["cuda_graphs"] = meta.get("extra", {}).get("cuda_graphs")
        log(f"worker serving after {ready_s:.1f}s: {meta.get('model_id')} ({meta.get('description', '')[:80]})")
        for sims, envs in configs:
            try:
                results["rows"].append(measure(worker, sims, envs, args, gpu, procs))
            except Exception as e:
                results["rows"].append({"sims": sims, "envs_per_sim": envs, "error": f"{type(e).__name__}: {e}"})
                log(f"{sims}x{envs} failed: {e}")
    finally:
        worker.stop()
        gpu.stop()
        procs.stop()
    command = "python -m benchmarks.libero_gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    path = write_record(make_record("gpu-libero", command, results), args.out and (
        args.out if args.out.endswith(".json") else os.path.join(args.out, "gpu-libero.json")))
    log("wrote", path)
    return 0 if all("error" not in r for r in results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
