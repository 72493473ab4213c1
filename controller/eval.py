"""`rolloutq eval`: one evaluation run, end to end.

Starts (or connects to) Redis and Ray, deploys the policy pool on Ray Serve, fills the sweep with
episodes over seeds, launches S simulator actors x K environments, follows results with a live
progress display, re-runs episodes lost to infrastructure (a dead simulator, a timeout), and
writes episodes.jsonl and summary.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rolloutq.broker.client import fetch_metadata
from rolloutq.broker.connection import REDIS_DOWN, connect_async
from rolloutq.broker.embedded import EmbeddedRedis, free_port
from rolloutq.broker.keys import Keys
from rolloutq.broker.settings import ClientSettings, RedisSettings, WorkerSettings
from rolloutq.broker.sweep import SweepQueue
from rolloutq.controller.autoscale import AutoscaleSettings
from rolloutq.controller.errors import EvalFailed
from rolloutq.controller.intake import ResultIntake
from rolloutq.controller.report import write_report
from rolloutq.controller.results import count_outcomes, percentile, summarize, write_results
from rolloutq.policy_workers.loop import PolicyWorkerSettings
from rolloutq.policy_workers.serve import ServeSettings
from rolloutq.sim_workers.outcomes import INFRA, POLICY_ERROR, RERUN, SCORED, SIM_ERROR, SUCCESS, outcome_of
from rolloutq.sim_workers.tasks import task_class
from rolloutq.sim_workers.worker import SimWorkerSettings

log = logging.getLogger("rolloutq.eval")


@dataclass
class EvalSettings:
    episodes: int = 8
    out: Path = Path("runs/latest")
    task: str = "g1-pickplace"
    task_options: dict[str, Any] = field(default_factory=dict)
    backend: str = "visuomotor"
    backend_options: dict[str, Any] = field(default_factory=dict)
    policy: str = "default"
    sims: int = 1
    envs_per_sim: int = 4
    sim_num_cpus: float = 1.0
    sim_num_gpus: float = 0.0
    sim_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each simulator actor asks for (e.g. {"sim_node": 1}), so the pool lands on
    simulator nodes; the policy pool's own are `serve.resources`."""
    mode: str = "embedded"
    """`embedded`: a local Ray (or `address`), an embedded Redis unless `redis.url`, the policy deployed
    on Ray Serve. `external`: no Ray; policy workers and simulators are separate processes (compose,
    other machines) attached to `redis.url`, and the controller only fills the sweep and collects its
    results. `attach`: a policy pool already serves on `redis.url` (`serve deploy`, policy-worker
    processes); only the simulators run, as Ray actors."""
    redis_host: str = ""
    """Address the embedded redis-server binds to on a Ray cluster (default: the head node's IP)."""
    action_horizon: int = 0
    """0 means: the policy's published action horizon."""
    seed_offset: int = 0
    address: str | None = None
    """Ray cluster address (`auto` for a running cluster); None starts a local Ray."""
    run_id: str = ""
    lease_s: float = 30.0
    max_attempts: int = 3
    """Runs of an episode that ends in sim_error or infra before its last outcome stands."""
    max_sim_errors: int = 0
    """More than this many episodes ending in sim_error (after every attempt): `rolloutq eval` exits non-zero."""
    video_episodes: int = 4
    timeout_s: float = 0.0
    sweep_ttl_s: int = 86400
    """Once the run is over its sweep's keys expire after this long (0: deleted at once)."""
    progress: bool = True
    verbose: bool = False
    ray_metrics: bool = True
    """Replicas and sims export metrics through Ray's metrics API (scraped from Ray's endpoint)."""
    mujoco_gl: str = "egl"
    replica_env: list[str] = field(default_factory=list)
    """Names of environment variables (e.g. HF_TOKEN) whose values the CLI copies from its shell into
    `serve.env_vars`, so secrets stay out of configuration files."""
    redis: RedisSettings = field(default_factory=RedisSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    autoscale: AutoscaleSettings = field(default_factory=AutoscaleSettings)
    """`--autoscale`: the controller sizes the policy pool and the sim pool (`sims` and
    `serve.replicas` are then only the starting sizes)."""

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        if self.redis.url:
            d["redis"]["url"] = "<given>"
        d["serve"]["env_vars"] = sorted(self.serve.env_vars)
        return d


def _metrics_factory(kind: str, policy: str = "") -> Any:
    """Recorders that report through Ray's metrics API (they reach Ray's Prometheus endpoint)."""
    import functools

    from rolloutq.monitoring.metrics import sim_metrics, worker_metrics

    if kind == "worker":
        return functools.partial(worker_metrics, backend="ray")
    return functools.partial(sim_metrics, policy=policy, backend="ray")


def _backend_options(s: EvalSettings) -> dict[str, Any]:
    """Fit a generic backend to the task: the `cnn` network takes the task's observation layout."""
    opts = dict(s.backend_options)
    layout = getattr(task_class(s.task), "layout", None) or {}
    if s.backend in ("null", "fixed-cost") and "action_dims" in layout:
        opts.setdefault("action_dims", layout["action_dims"])
    if s.backend == "cnn":
        for k, v in layout.items():
            opts.setdefault(k, v)
        size = s.task_options.get("image_size")
        if size and "image_shape" in opts:
            shape = list(opts["image_shape"])
            shape[2] = shape[3] = int(size)
            opts["image_shape"] = shape
    return opts


def _check_names(s: EvalSettings) -> None:
    """Refuse a `--task` or `--backend` that names nothing importable here, before Ray starts."""
    from rolloutq.policy_workers.backends import backend_class
    from rolloutq.policy_workers.errors import PolicyWorkerError
    from rolloutq.sim_workers.errors import SimWorkerError

    try:
        task_class(s.task)
        if s.mode == "embedded":
            backend_class(s.backend)
    except (PolicyWorkerError, SimWorkerError) as e:
        raise EvalFailed(str(e)) from None


class _Live:
    """What the progress line shows, updated from results and worker stats."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.records: dict[int, dict[str, Any]] = {}
        self.started = time.perf_counter()
        self.calls_first: tuple[float, int] | None = None
        self.calls_rate = 0.0

    def line(self, live_steps: int) -> str:
        outcomes, _ = count_outcomes(list(self.records.values()))
        scored = sum(outcomes[o] for o in SCORED)
        elapsed = max(1e-6, time.perf_counter() - self.started)
        rts = [x for r in self.records.values() for x in r["round_trip_ms"][-50:]]
        p50 = percentile(rts, 50)
        rate = f"{outcomes[SUCCESS] / scored:.0%} of {scored} scored" if scored else "-"
        errors = ", ".join(f"{o} {outcomes[o]}" for o in (POLICY_ERROR, SIM_ERROR, INFRA) if outcomes[o])
        return (f"success {rate}{f' ({errors})' if errors else ''} | {live_steps / elapsed:.1f} env steps/s | "
                f"{self.calls_rate:.1f} policy calls/s | rt p50 {p50 if p50 is not None else '-'} ms")


async def _worker_stats(r: Any, keys: Keys, policy: str) -> dict[str, Any]:
    """Totals over the workers that wrote their stats recently; records of dead workers are
    deleted where this user may (rolloutq.monitoring.worker_records)."""
    from rolloutq.monitoring.worker_records import read_records_async

    records = await read_records_async(r, keys.worker_stats(policy), prune=True)
    snaps = [w.stats for w in (*records.fresh, *records.stale)]  # a worker that died still served
    served = sum(s.get("served_total", 0) for s in snaps)
    batches = sum(s.get("batches_total", 0) for s in snaps)
    return {"replicas_reporting": len(records.fresh), "replicas_stale": len(records.stale),
            "served_total": served, "batches_total": batches,
            "mean_batch_size": round(served / batches, 3) if batches else 0.0,
            "busy_s_total": round(sum(s.get("busy_s_total", 0.0) for s in snaps), 3),
            "errors_total": _merge([s.get("errors_total", {}) for s in snaps])}


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def run_eval(s: EvalSettings, console: Console | None = None) -> dict[str, Any]:
    """Run a whole evaluation; returns the summary (also written to `s.out`)."""
    import ray
    from ray import serve
    from rolloutq.policy_workers.serve import deploy
    from rolloutq.sim_workers.actor import SimActor

    console = console or Console(stderr=True)
    s.run_id = s.run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    embedded: EmbeddedRedis | None = None
    started_ray = False
    if s.mode != "external":
        _check_names(s)  # outside the try: its finally would start a Ray to shut Serve down
    try:
        if s.mode == "external":
            if s.redis.url is None:
                raise EvalFailed("--mode external needs --redis-url: the policy workers and simulators must reach "
                                 "the same Redis")
            return asyncio.run(_drive(s, console, None, None))
        if s.mode == "attach" and s.redis.url is None:
            raise EvalFailed("--mode attach needs --redis-url: the Redis the running policy pool serves from")
        env_vars = {"MUJOCO_GL": s.mujoco_gl, "PYOPENGL_PLATFORM": s.mujoco_gl, **s.serve.env_vars}
        if s.autoscale.enabled:
            a = s.autoscale
            s.serve.external_scaler = True
            s.serve.replicas = max(1, a.policy.min_replicas, min(s.serve.replicas, a.policy.max_replicas))
            s.sims = max(0, min(s.sims, a.sims.max_sims))
        if not ray.is_initialized():
            replicas, sims = s.serve.replicas, s.sims
            if s.autoscale.enabled:
                replicas, sims = s.autoscale.policy.max_replicas, s.autoscale.sims.max_sims
            need = replicas * s.serve.num_cpus + sims * s.sim_num_cpus
            init_args: dict[str, Any] = {
                "runtime_env": {"env_vars": env_vars},
                "log_to_driver": s.verbose,
                "logging_level": logging.INFO if s.verbose else logging.WARNING,
                "include_dashboard": False,
            }
            if s.address:
                ray.init(address=s.address, **init_args)
            else:
                ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), _node_ip_address="127.0.0.1",
                         **init_args)
            started_ray = True
        if s.redis.url is None:
            embedded = _start_redis(s, ray)
            s.redis.url = embedded.url
            console.print(f"[dim]embedded redis-server on {embedded.url.split('@')[-1]}[/dim]")
        if s.mode == "embedded":
            serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
            worker = PolicyWorkerSettings(backend=s.backend, backend_options=_backend_options(s), redis=s.redis,
                                          worker=s.worker)
            worker.worker.policy = s.policy
            s.serve.env_vars = env_vars
            with console.status(f"deploying policy {s.policy!r} ({s.backend}) on Ray Serve..."):
                deploy(worker, s.serve, _metrics_factory("worker") if s.ray_metrics else None)
        return asyncio.run(_drive(s, console, ray, SimActor))
    finally:
        if s.mode == "embedded":
            with contextlib.suppress(Exception):
                serve.shutdown()
        if started_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()
        if embedded is not None:
            embedded.cleanup()
            s.redis.url = None


def _start_redis(s: EvalSettings, ray: Any) -> EmbeddedRedis:
    """The broker's Redis, started by the controller. Alone it listens on loopback; on a Ray cluster it
    listens on the head node's address (nodes must reach it) behind a random password."""
    if not s.address:
        return EmbeddedRedis().start()
    import secrets

    host = s.redis_host or ray.util.get_node_ip_address()
    password = secrets.token_urlsafe(24)
    server = EmbeddedRedis(host=host, password=password).start()
    log.info("embedded redis-server for the cluster on %s:%d", host, server.port)
    return server


async def _drive(s: EvalSettings, console: Console, ray: Any, SimActor: type) -> dict[str, Any]:
    keys = Keys(s.redis.namespace)
    r = connect_async(s.redis)
    actors: list[Any] = []
    queue: SweepQueue | None = None
    try:
        meta = await fetch_metadata(r, keys, s.policy, wait_s=s.serve.health_check_timeout_s)
        horizon = s.action_horizon or int(meta.get("action_horizon", 8))
        task_options = dict(s.task_options)
        if any(k.startswith("privileged.") for k in meta.get("observation_schema", {})):
            task_options.setdefault("privileged", True)
        config = {"policy": s.policy, "task": s.task, "task_options": task_options, "action_horizon": horizon,
                  "shards": s.worker.shards, "video_episodes": s.video_episodes, "episodes": s.episodes,
                  "model_id": meta.get("model_id")}
        queue = SweepQueue(r, s.run_id, keys)
        intake = ResultIntake(s.run_id, report=lambda m: console.print(f"[yellow]{escape(m)}[/yellow]",
                                                                        highlight=False))
        specs = [intake.spec(i, s.seed_offset + i) for i in range(s.episodes)]
        await queue.create(config, specs, s.lease_s)
        sim_settings = [SimWorkerSettings(run=s.run_id, redis=s.redis, client=s.client, envs=s.envs_per_sim,
                                          sim_id=f"sim{i}") for i in range(s.sims)]
        runs: dict[Any, Any] = {}
        auto = None
        if ray is not None:
            remote = ray.remote(num_cpus=s.sim_num_cpus, num_gpus=s.sim_num_gpus, max_concurrency=4,
                                resources=dict(s.sim_resources) or None)(SimActor)
            if s.autoscale.enabled:
                from rolloutq.controller.control import start_for_eval

                auto = await start_for_eval(s, console, ray, remote, queue)
                actors, runs = auto.sim_pool.actors, auto.sim_pool.runs
            else:
                sim_factory = _metrics_factory("sim", s.policy) if s.ray_metrics else None
                actors = [remote.remote(ss, sim_factory) for ss in sim_settings]
                runs = {a: a.run.remote() for a in actors}
        else:
            console.print(f"[dim]sweep {s.run_id!r} ready: waiting for simulators (`rolloutq sim-worker --run "
                          f"{s.run_id}`) and policy workers on this Redis[/dim]")
        try:
            records, videos = await _follow(s, console, r, keys, queue, actors, runs, ray,
                                            tick=auto.tick if auto else None, intake=intake)
        finally:
            if auto is not None:
                auto.close()
        await queue.stop()
        stats = await _worker_stats(r, keys, s.policy)
        stats["model_id"] = meta.get("model_id")
        stats["parameters"] = meta.get("parameters")
        stats["device"] = meta.get("device")
        wall = max((r_["started_at"] + r_["wall_s"] for r_ in records), default=0) - min(
            (r_["started_at"] for r_ in records), default=0)
        summary = summarize(records, wall, stats, {**s.public(), "run_id": s.run_id, "sweep": config})
        summary["rejected_results"] = dict(intake.rejected)
        summary["rejected_finish"] = await queue.rejected_finishes()
        if auto is not None:
            summary["autoscale"] = auto.summary()
        write_results(s.out, records, summary)
        if videos:
            vdir = s.out / "videos"
            vdir.mkdir(parents=True, exist_ok=True)
            for ep, data in sorted(videos.items()):
                (vdir / f"episode_{ep:04d}.gif").write_bytes(data)
        summary["report"] = str(write_report(s.out, records, summary))
        return summary
    finally:
        if queue is not None:
            with contextlib.suppress(*REDIS_DOWN):
                await queue.expire(s.sweep_ttl_s)
        for a in list(actors):
            with contextlib.suppress(Exception):
                ray.kill(a)
        await r.aclose()


async def _follow(s: EvalSettings, console: Console, r: Any, keys: Keys, queue: SweepQueue, actors: list,
                  runs: dict, ray: Any, tick: Any = None, *,
                  intake: ResultIntake) -> tuple[list[dict[str, Any]], dict[int, bytes]]:
    """Follow the sweep's results until every episode has its last one. Only results `intake` takes
    are seen here: a result that is malformed, forged, late or a duplicate is counted and dropped."""
    live = _Live(s.episodes)
    final: dict[int, dict[str, Any]] = {}
    videos: dict[int, bytes] = {}
    last_id = b"0-0"
    last_expire = 0.0
    last_tick = 0.0
    deadline = time.perf_counter() + s.timeout_s if s.timeout_s else None
    live_steps = 0
    progress = Progress(TextColumn("[bold]episodes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.description}"), console=console, disable=not s.progress,
                        transient=False)
    with progress:
        bar = progress.add_task("starting simulators...", total=s.episodes)
        down_since: float | None = None
        backoff = 0.2
        while len(final) < s.episodes:
            try:
                for entry in await queue.read_results(last_id, block_ms=500):
                    last_id, video = entry.entry_id, entry.video
                    record = intake.accept(entry)
                    if record is None:
                        continue
                    ep = record["episode"]
                    if ep in final:
                        continue  # a duplicate from a simulator whose lease had expired
                    outcome = outcome_of(record)
                    if outcome in RERUN and record["attempt"] < s.max_attempts:
                        log.warning("episode %d attempt %d ended %s (%s: %s); re-running", ep, record["attempt"],
                                    outcome, record.get("reason"), record.get("error"))
                        await queue.requeue(intake.spec(ep, record["seed"], record["attempt"] + 1))
                        continue
                    if outcome in RERUN:
                        console.print(f"[red]episode {ep} ended {outcome} ({escape(str(record.get('reason')))}) "
                                      f"after {record['attempt']} attempts, not scored: "
                                      f"{escape(str(record.get('error')))}[/red]", highlight=False)
                    final[ep] = record
                    live.records[ep] = record
                    if video:
                        videos[ep] = video
                now = time.perf_counter()
                if now - last_expire > 1.0:
                    last_expire = now
                    back = await queue.expire_leases(intake.hand_back)
                    if back:
                        console.print(f"[yellow]{back} episode(s) handed back from simulators that stopped "
                                      "answering; re-running them[/yellow]")
                    if ray is not None:
                        live_steps = await _live_steps(actors, ray, live_steps)
                    st = await _worker_stats(r, keys, s.policy)
                    t = time.perf_counter()
                    if live.calls_first is None:
                        live.calls_first = (t, st["served_total"])
                    elif t > live.calls_first[0]:
                        live.calls_rate = (st["served_total"] - live.calls_first[1]) / (t - live.calls_first[0])
                    if ray is not None:
                        _check_sims(runs, ray, len(final), s.episodes)
                if tick is not None and time.perf_counter() - last_tick >= s.autoscale.interval_s:
                    last_tick = time.perf_counter()
                    await tick()
            except REDIS_DOWN as e:
                # Redis restarting: simulators and workers ride it out too; results written before it
                # went down are read again from `last_id` once it is back (AOF keeps them).
                if down_since is None:
                    down_since = time.perf_counter()
                    console.print(f"[yellow]Redis unreachable ({type(e).__name__}); waiting for it to come "
                                  "back...[/yellow]")
                if deadline and time.perf_counter() > deadline:
                    raise EvalFailed(f"Redis unreachable at --timeout-s {s.timeout_s:.0f}s: "
                                     f"{len(final)}/{s.episodes} episodes done") from None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if down_since is not None:
                console.print(f"[green]Redis is back after {time.perf_counter() - down_since:.1f}s[/green]")
                down_since, backoff = None, 0.2
            progress.update(bar, completed=len(final), description=live.line(live_steps))
            if deadline and time.perf_counter() > deadline:
                raise EvalFailed(f"run did not finish within --timeout-s {s.timeout_s:.0f}s: "
                                 f"{len(final)}/{s.episodes} episodes done")
    return list(final.values()), videos


async def _live_steps(actors: list, ray: Any, previous: int) -> int:
    try:
        refs = [a.progress.remote() for a in actors]
        got = await asyncio.wait_for(asyncio.gather(*[asyncio.wrap_future(ref.future()) for ref in refs]), 2.0)
        return sum(g["steps"] for g in got)
    except Exception:
        return previous


def _check_sims(runs: dict, ray: Any, done: int, total: int) -> None:
    if not runs:  # an autoscaled pool may be empty for a moment
        return
    ready, _ = ray.wait(list(runs.values()), timeout=0, num_returns=len(runs))
    if len(ready) < len(runs) or done >= total:
        return
    errors = []
    for ref in ready:
        try:
            ray.get(ref)
        except Exception as e:
            errors.append(str(e).splitlines()[0][:300])
    raise EvalFailed("every simulator actor exited before the sweep finished"
                     + (f": {errors[0]}" if errors else "") + " (run with --verbose to see their logs)")
