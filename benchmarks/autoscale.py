"""Autoscaler figures: reaction to a load step, over/under-shoot, and sweep wall time with
autoscaling vs fixed pool sizes, on real Ray Serve, a real Prometheus and a real Redis (CPU).

The policy is the `fixed-cost` backend (sleeps `batch_ms` per batch, so μ is known), the metrics
are scraped every second by Prometheus, and the controller decides every second.

  step:  open-loop load (λ requests/s, each a new rollout) steps from 0 to --rate for --hold-s,
         then stops. Reports: seconds from the step to the first scale-up decision, to the new
         replica RUNNING in Serve, to its first reply; peak and settled replica counts vs the ideal
         ceil(λ / (μ × target)); the backlog (lag) peak; seconds from the load's end to min replicas.
  sweep: the same reach sweep (N episodes) run with fixed (replicas, sims) sizes and with
         --autoscale; wall time and episodes/s for each.

    PYTHONPATH=. python benchmarks/autoscale.py step --rate 200 --out benchmarks/out/autoscale-step.json
    PYTHONPATH=. python benchmarks/autoscale.py sweep --episodes 32 --out benchmarks/out/autoscale-sweep.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rolloutq.broker.client import PolicyClient  # noqa: E402
from rolloutq.broker.connection import connect_async  # noqa: E402
from rolloutq.broker.embedded import EmbeddedRedis, free_port  # noqa: E402
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings  # noqa: E402
from rolloutq.controller.autoscale import AutoscaleSettings, PolicyPoolSettings, SimPoolSettings  # noqa: E402
from rolloutq.controller.control import Controller  # noqa: E402
from rolloutq.controller.localstack import LocalStack  # noqa: E402
from rolloutq.controller.pools import ServePolicyPool  # noqa: E402

POLICY = "bench"
APP = "rolloutq-policy"


class Env:
    def __init__(self, exporter_root: str | None) -> None:
        import ray
        from ray import serve

        self.redis = EmbeddedRedis().start()
        self.gauges = None
        if exporter_root:
            self.stack = LocalStack(self.redis.url, exporter_root_hint=exporter_root).start()
        else:
            from tests.controller.queue_gauges import QueueGauges

            self.gauges = QueueGauges(self.redis.url, POLICY, interval_s=0.5).start()
            self.stack = LocalStack(self.redis.url, extra_targets=[f"127.0.0.1:{self.gauges.port}"]).start(
                with_exporter=False)
        gl = os.environ.get("MUJOCO_GL", "egl")
        ray.init(num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "MUJOCO_GL": gl, "PYOPENGL_PLATFORM": gl}})
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})

    def close(self) -> None:
        import ray
        from ray import serve

        for f in (serve.shutdown, ray.shutdown, self.stack.stop, self.redis.cleanup):
            try:
                f()
            except Exception:
                pass
        if self.gauges:
            self.gauges.stop()


def _auto(url: str, a: argparse.Namespace) -> AutoscaleSettings:
    return AutoscaleSettings(
        enabled=True, interval_s=1.0, prometheus_url=url, window=a.window, stale_after_s=10,
        prometheus_timeout_s=1.0,
        policy=PolicyPoolSettings(min_replicas=1, max_replicas=a.max_replicas, target_utilization=0.8,
                                  up_delay_s=a.up_delay_s, down_delay_s=a.down_delay_s, max_step_up=2,
                                  max_step_down=1),
        sims=SimPoolSettings(max_sims=a.max_sims, envs_per_sim=a.envs_per_sim, up_delay_s=a.up_delay_s,
                             down_delay_s=a.down_delay_s / 2))


def step(a: argparse.Namespace) -> dict:
    from rolloutq.policy_workers.loop import PolicyWorkerSettings
    from rolloutq.policy_workers.serve import ServeSettings, deploy

    env = Env(a.exporter_root)
    try:
        rs = RedisSettings(url=env.redis.url)
        worker = PolicyWorkerSettings(backend="fixed-cost", backend_options={"batch_ms": a.batch_ms}, redis=rs,
                                      worker=WorkerSettings(policy=POLICY, batch=BatchSettings(
                                          max_batch_size=a.max_batch, max_wait_ms=5)))
        deploy(worker, ServeSettings(name=APP, replicas=1, num_cpus=0.25, external_scaler=True,
                                     health_check_period_s=2))
        env.stack.wait_for(f'rolloutq_queue_lag{{policy="{POLICY}"}}', 30)
        pool = ServePolicyPool(APP)
        ctl = Controller(_auto(env.stack.prometheus_url, a), POLICY, pool)
        mu = a.max_batch / (a.batch_ms / 1000)
        ideal = math.ceil(a.rate / (mu * 0.8) - 1e-9)
        return asyncio.run(_step(a, rs, ctl, pool, mu, ideal))
    finally:
        env.close()


async def _step(a, rs, ctl, pool, mu, ideal) -> dict:
    stop_ctl = asyncio.Event()
    ctl_task = asyncio.create_task(ctl.run(stop_ctl))
    r = connect_async(rs)
    client = PolicyClient(r, POLICY, settings=ClientSettings(deadline_s=120, reply_timeout_s=60))
    obs = {"x": np.ones((1, 3), np.float32)}
    replies: list[tuple[float, str, float]] = []
    samples: list[dict] = []
    tasks: set[asyncio.Task] = set()

    async def one(i: int) -> None:
        res = await client.act(f"ol{i}", obs)
        replies.append((time.monotonic(), res.worker, res.round_trip_ms))
        client.forget(f"ol{i}")

    await asyncio.sleep(a.idle_s)
    t0 = time.monotonic()
    i = 0
    t_end_load = t0 + a.hold_s
    next_sample = t0
    while True:
        now = time.monotonic()
        if now < t_end_load:
            due = int((now - t0) * a.rate)
            while i < due:
                task = asyncio.create_task(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
        if now >= next_sample:
            next_sample += 1.0
            last = ctl.history[-1] if ctl.history else {}
            samples.append({"t": round(now - t0, 2), "target": pool.current_target(), "running": pool.running(),
                            "lag": (last.get("inputs", {}).get("metrics", {}) or {}).get("lag"),
                            "reason": last.get("policy_reason", "")})
            if now > t_end_load and pool.current_target() == 1 and pool.running() == 1 and not tasks:
                break
            if now - t0 > a.hold_s + a.settle_s:
                break
        await asyncio.sleep(0.005)
    stop_ctl.set()
    await ctl_task
    await r.aclose()

    first_worker = replies[0][1] if replies else None
    decisions = [h for h in ctl.history if h["ts"] >= time.time() - (time.monotonic() - t0)]
    t_dec = next((s["t"] for s in samples if s["target"] > 1), None)
    t_run = next((s["t"] for s in samples if s["running"] > 1), None)
    t_serve = next((round(t - t0, 2) for t, w, _ in replies if w != first_worker), None)
    during = [s for s in samples if s["t"] <= a.hold_s]
    peak = max(s["target"] for s in samples)
    settled = [s["target"] for s in during if s["t"] >= a.hold_s - 10]
    t_ideal = next((s["t"] for s in during if s["running"] >= ideal), None)
    t_down = next((s["t"] - a.hold_s for s in samples if s["t"] > a.hold_s and s["target"] == 1
                   and s["running"] == 1), None)
    rts = sorted(rt for t, _, rt in replies)
    out = {
        "rate": a.rate, "batch_ms": a.batch_ms, "max_batch": a.max_batch, "mu_per_replica": mu,
        "ideal_replicas": ideal, "max_replicas": a.max_replicas, "up_delay_s": a.up_delay_s,
        "down_delay_s": a.down_delay_s, "window": a.window,
        "s_to_scale_up_decision": t_dec, "s_to_new_replica_running": t_run, "s_to_new_replica_serving": t_serve,
        "s_to_ideal_running": t_ideal, "peak_replicas": peak, "settled_replicas": settled[-1] if settled else None,
        "overshoot": peak - ideal, "lag_peak": max((s["lag"] or 0) for s in samples),
        "s_from_load_end_to_min": t_down, "requests": len(replies),
        "round_trip_ms_p50": rts[len(rts) // 2] if rts else None,
        "round_trip_ms_p99": rts[int(len(rts) * 0.99)] if rts else None,
        "samples": samples, "decisions": len(decisions),
    }
    return out


def sweep(a: argparse.Namespace) -> dict:
    from rolloutq.controller.eval import EvalSettings, run_eval
    from rolloutq.policy_workers.serve import ServeSettings

    env = Env(a.exporter_root)
    results = []
    try:
        base = EvalSettings(
            episodes=a.episodes, task="reach", task_options={"image_size": 32, "max_steps": a.max_steps},
            backend="fixed-cost", backend_options={"batch_ms": a.batch_ms, "item_ms": a.item_ms}, policy=POLICY,
            envs_per_sim=a.envs_per_sim, sim_num_cpus=0.25, video_episodes=0, progress=False, timeout_s=600,
            mujoco_gl=os.environ.get("MUJOCO_GL", "egl"), redis=RedisSettings(url=env.redis.url),
            worker=WorkerSettings(policy=POLICY, batch=BatchSettings(max_batch_size=a.max_batch, max_wait_ms=5)),
            client=ClientSettings(deadline_s=120, reply_timeout_s=60))
        configs = [("fixed", int(x.split("x")[0]), int(x.split("x")[1])) for x in a.fixed]
        configs.append(("autoscale", 1, 1))
        for kind, replicas, sims in configs:
            s = replace(base, out=Path(a.work) / f"{kind}-{replicas}x{sims}", sims=sims,
                        serve=ServeSettings(name=APP, replicas=replicas, num_cpus=0.25, health_check_period_s=2),
                        run_id=f"bench-{kind}-{replicas}x{sims}-{int(time.time())}")
            if kind == "autoscale":
                s.autoscale = _auto(env.stack.prometheus_url, a)
            t0 = time.perf_counter()
            summary = run_eval(s)
            wall = time.perf_counter() - t0
            row = {"kind": kind, "replicas": replicas, "sims": sims, "episodes": summary["episodes"],
                   "wall_s_total": round(wall, 1), "episode_wall_s": summary.get("wall_s"),
                   "episodes_per_s": round(summary["episodes"] / wall, 3)}
            if kind == "autoscale":
                au = summary["autoscale"]
                row.update(max_replicas_desired=au["max_replicas_desired"], max_sims_desired=au["max_sims_desired"],
                           changes=au["changes"], held=au["held"])
            print(json.dumps(row), flush=True)
            results.append(row)
    finally:
        env.close()
    return {"episodes": a.episodes, "batch_ms": a.batch_ms, "item_ms": a.item_ms, "max_batch": a.max_batch,
            "envs_per_sim": a.envs_per_sim, "max_replicas": a.max_replicas, "max_sims": a.max_sims,
            "runs": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["step", "sweep"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--exporter-root", default=None,
                    help="checkout with monitoring/exporter.py (default: the tests' queue-gauge stand-in)")
    ap.add_argument("--rate", type=float, default=200.0, help="step: requests/s after the step")
    ap.add_argument("--idle-s", type=float, default=5.0)
    ap.add_argument("--hold-s", type=float, default=50.0)
    ap.add_argument("--settle-s", type=float, default=60.0)
    ap.add_argument("--batch-ms", type=float, default=40.0)
    ap.add_argument("--item-ms", type=float, default=0.0, help="sweep: fixed-cost time per observation")
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--max-replicas", type=int, default=4)
    ap.add_argument("--max-sims", type=int, default=4)
    ap.add_argument("--envs-per-sim", type=int, default=2)
    ap.add_argument("--up-delay-s", type=float, default=2.0)
    ap.add_argument("--down-delay-s", type=float, default=6.0)
    ap.add_argument("--window", default="5s")
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--max-steps", type=int, default=48)
    ap.add_argument("--fixed", nargs="*", default=["1x1", "1x2", "2x2", "2x4"],
                    help="sweep: fixed REPLICASxSIMS sizes to compare against")
    ap.add_argument("--work", default="/tmp/rq-bench-autoscale")
    a = ap.parse_args()
    res = step(a) if a.what == "step" else sweep(a)
    res["command"] = " ".join(["PYTHONPATH=. python benchmarks/autoscale.py", *sys.argv[1:]])
    res["machine"] = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    from benchmarks.harness.record import make_record, write_record

    write_record(make_record(f"autoscale-{a.what}", res["command"], res), a.out)
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
