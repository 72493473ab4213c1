"""`rolloutq eval`: one evaluation run, end to end.

Starts (or connects to) Redis and Ray, deploys the policy pool on Ray Serve, fills the sweep with
episodes over seeds, launches S simulator actors x K environments, follows the results
(`rolloutq.controller.follow`: live progress, re-runs of episodes lost to infrastructure) and
writes episodes.jsonl, summary.json and the report.
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
from rolloutq.broker.client import fetch_metadata
from rolloutq.broker.connection import REDIS_DOWN, connect_async
from rolloutq.broker.embedded import EmbeddedRedis, free_port
from rolloutq.broker.keys import Keys
from rolloutq.broker.settings import ClientSettings, RedisSettings, WorkerSettings
from rolloutq.broker.sweep import SweepQueue
from rolloutq.controller.autoscale import AutoscaleSettings
from rolloutq.controller.errors import EvalFailed
from rolloutq.controller.follow import follow_sweep, worker_stats
from rolloutq.controller.intake import ResultIntake
from rolloutq.controller.report import write_report
from rolloutq.controller.results import group_table, summarize, write_results
from rolloutq.controller.run_folder import write_redis_url
from rolloutq.policy_workers.loop import PolicyWorkerSettings
from rolloutq.policy_workers.serve import ServeSettings
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


def run_eval(s: EvalSettings, console: Console | None = None) -> dict[str, Any]:
    """Run a whole evaluation; returns the summary (also written to `s.out`)."""
    import ray
    from ray import serve
    from rolloutq.sim_workers.actor import SimActor

    console = console or Console(stderr=True)
    s.run_id = s.run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    if s.mode == "external":
        return _run_external(s, console)
    _check_names(s)  # outside the try: its finally would start a Ray to shut Serve down
    embedded: EmbeddedRedis | None = None
    started_ray = False
    try:
        if s.mode == "attach" and s.redis.url is None:
            raise EvalFailed("--mode attach needs --redis-url: the Redis the running policy pool serves from")
        env_vars = {"MUJOCO_GL": s.mujoco_gl, "PYOPENGL_PLATFORM": s.mujoco_gl, **s.serve.env_vars}
        _fit_to_autoscale(s)
        if not ray.is_initialized():
            _start_ray(s, ray, env_vars)
            started_ray = True
        if s.redis.url is None:
            embedded = _start_redis(s, ray)
            s.redis.url = embedded.url
            write_redis_url(s.out, embedded.url)  # for `rolloutq top --run-dir` / `health --run-dir`
            console.print(f"[dim]embedded redis-server on {embedded.url.split('@')[-1]}[/dim]")
        if s.mode == "embedded":
            _deploy_policy(s, console, serve, env_vars)
        return asyncio.run(_drive(s, console, ray, SimActor))
    finally:
        _shut_down(s, ray if started_ray else None, serve, embedded)


def _run_external(s: EvalSettings, console: Console) -> dict[str, Any]:
    """No Ray: the policy workers and simulators are processes of their own on the same Redis."""
    if s.redis.url is None:
        raise EvalFailed("--mode external needs --redis-url: the policy workers and simulators must reach "
                         "the same Redis")
    return asyncio.run(_drive(s, console, None, None))


def _fit_to_autoscale(s: EvalSettings) -> None:
    """With `--autoscale` the autoscaler sizes the pools: `sims` and `serve.replicas` become starting sizes
    within its bounds."""
    a = s.autoscale
    if not a.enabled:
        return
    s.serve.external_scaler = True
    s.serve.replicas = max(1, a.policy.min_replicas, min(s.serve.replicas, a.policy.max_replicas))
    s.sims = max(0, min(s.sims, a.sims.max_sims))


def _start_ray(s: EvalSettings, ray: Any, env_vars: dict[str, str]) -> None:
    """Join `s.address`, or start a local Ray with CPUs enough for the largest pools the run may have."""
    replicas, sims = s.serve.replicas, s.sims
    if s.autoscale.enabled:
        replicas, sims = s.autoscale.policy.max_replicas, s.autoscale.sims.max_sims
    need = replicas * s.serve.num_cpus + sims * s.sim_num_cpus
    init_args: dict[str, Any] = {
        "runtime_env": {"env_vars": env_vars},
        "log_to_driver": s.verbose,
        "logging_level": logging.INFO if s.verbose else logging.ERROR,  # e.g. Ray's token-auth notice
        "include_dashboard": False,
    }
    if s.address:
        ray.init(address=s.address, **init_args)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), _node_ip_address="127.0.0.1", **init_args)


def _deploy_policy(s: EvalSettings, console: Console, serve: Any, env_vars: dict[str, str]) -> None:
    from rolloutq.policy_workers.serve import deploy

    if not s.verbose:  # Serve's own progress lines ("Started Serve", "... is ready at http://...")
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    worker = PolicyWorkerSettings(backend=s.backend, backend_options=_backend_options(s), redis=s.redis,
                                  worker=s.worker)
    worker.worker.policy = s.policy
    s.serve.env_vars = env_vars
    with console.status(f"deploying policy {s.policy!r} ({s.backend}) on Ray Serve..."):
        deploy(worker, s.serve, _metrics_factory("worker") if s.ray_metrics else None)


def _shut_down(s: EvalSettings, own_ray: Any, serve: Any, embedded: EmbeddedRedis | None) -> None:
    """Serve, then Ray if this run started it (`own_ray`, else None), then the embedded Redis. A Ray
    this run started takes Serve down with it (shutting Serve down first only races its controller's
    own shutdown and prints Ray's errors about it)."""
    if s.mode == "embedded" and own_ray is None:
        with contextlib.suppress(Exception):
            serve.shutdown()
    if own_ray is not None:
        with contextlib.suppress(Exception):
            own_ray.shutdown()
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
    """Fill the sweep, start the simulators, follow the results to the end and write the run's folder."""
    keys = Keys(s.redis.namespace)
    r = connect_async(s.redis)
    actors: list[Any] = []
    queue: SweepQueue | None = None
    try:
        meta = await fetch_metadata(r, keys, s.policy, wait_s=s.serve.health_check_timeout_s)
        config = _sweep_config(s, meta)
        queue = SweepQueue(r, s.run_id, keys)
        intake = ResultIntake(s.run_id, report=lambda m: console.print(f"[yellow]{escape(m)}[/yellow]",
                                                                        highlight=False))
        await queue.create(config, [intake.spec(i, s.seed_offset + i) for i in range(s.episodes)], s.lease_s)
        runs: dict[Any, Any] = {}
        auto = await _start_sims(s, console, ray, SimActor, queue, actors, runs)
        if auto is not None:
            actors, runs = auto.sim_pool.actors, auto.sim_pool.runs
        try:
            records, videos = await follow_sweep(s, console, r, keys, queue, actors, runs, ray,
                                                 tick=auto.tick if auto else None, intake=intake)
        finally:
            if auto is not None:
                auto.close()
        await queue.stop()
        summary = summarize(records, _wall_s(records), await _run_stats(r, keys, s.policy, meta),
                            {**s.public(), "run_id": s.run_id, "sweep": config})
        group_of = getattr(task_class(s.task), "episode_group", None)
        if group_of is not None:  # e.g. LIBERO: a table per task of the suite
            summary["groups"] = group_table(records, lambda seed: group_of(seed, config["task_options"]))
        summary["rejected_results"] = dict(intake.rejected)
        summary["rejected_finish"] = await queue.rejected_finishes()
        if auto is not None:
            summary["autoscale"] = auto.summary()
        _write_run(s.out, records, summary, videos)
        return summary
    finally:
        if queue is not None:
            with contextlib.suppress(*REDIS_DOWN):
                await queue.expire(s.sweep_ttl_s)
        for a in list(actors):
            with contextlib.suppress(Exception):
                ray.kill(a)
        await r.aclose()


def _sweep_config(s: EvalSettings, meta: dict[str, Any]) -> dict[str, Any]:
    """What every simulator of the sweep reads: the policy's action horizon unless set, and the
    privileged observations when the policy asks for them."""
    horizon = s.action_horizon or int(meta.get("action_horizon", 8))
    task_options = dict(s.task_options)
    if any(k.startswith("privileged.") for k in meta.get("observation_schema", {})):
        task_options.setdefault("privileged", True)
    return {"policy": s.policy, "task": s.task, "task_options": task_options, "action_horizon": horizon,
            "shards": s.worker.shards, "video_episodes": s.video_episodes, "episodes": s.episodes,
            "model_id": meta.get("model_id")}


async def _start_sims(s: EvalSettings, console: Console, ray: Any, SimActor: type, queue: SweepQueue,
                      actors: list[Any], runs: dict[Any, Any]) -> Any:
    """Start the simulator actors into `actors` and `runs`; with `--autoscale` the autoscaler's pool
    holds them instead, and its controller (with `sim_pool`, `tick`, `close`, `summary`) is returned."""
    if ray is None:
        console.print(f"[dim]sweep {s.run_id!r} ready: waiting for simulators (`rolloutq sim-worker --run "
                      f"{s.run_id}`) and policy workers on this Redis[/dim]")
        return None
    remote = ray.remote(num_cpus=s.sim_num_cpus, num_gpus=s.sim_num_gpus, max_concurrency=4,
                        resources=dict(s.sim_resources) or None)(SimActor)
    if s.autoscale.enabled:
        from rolloutq.controller.control import start_for_eval

        return await start_for_eval(s, console, ray, remote, queue)
    sim_factory = _metrics_factory("sim", s.policy) if s.ray_metrics else None
    actors.extend(remote.remote(SimWorkerSettings(run=s.run_id, redis=s.redis, client=s.client,
                                                  envs=s.envs_per_sim, sim_id=f"sim{i}"), sim_factory)
                  for i in range(s.sims))
    runs.update({a: a.run.remote() for a in actors})
    return None


async def _run_stats(r: Any, keys: Keys, policy: str, meta: dict[str, Any]) -> dict[str, Any]:
    stats = await worker_stats(r, keys, policy)
    stats["model_id"] = meta.get("model_id")
    stats["parameters"] = meta.get("parameters")
    stats["device"] = meta.get("device")
    return stats


def _wall_s(records: list[dict[str, Any]]) -> float:
    """From the first episode's start to the last one's end."""
    return max((r["started_at"] + r["wall_s"] for r in records), default=0) - min(
        (r["started_at"] for r in records), default=0)


def _write_run(out: Path, records: list[dict[str, Any]], summary: dict[str, Any], videos: dict[int, bytes]) -> None:
    """episodes.jsonl, summary.json, the videos and the report."""
    write_results(out, records, summary)
    if videos:
        vdir = out / "videos"
        vdir.mkdir(parents=True, exist_ok=True)
        for ep, data in sorted(videos.items()):
            (vdir / f"episode_{ep:04d}.gif").write_bytes(data)
    summary["report"] = str(write_report(out, records, summary))
