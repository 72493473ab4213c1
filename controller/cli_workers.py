"""The commands that run one process of a stack without Ray (compose, other machines):
`policy-worker`, `sim-worker`, and `health`, the container health check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import typer
from rolloutq.controller.cli_shared import (
    BACKEND_OPTION,
    CONFIG,
    LOCAL_REDIS,
    NAMESPACE,
    POLICY,
    REDIS_URL,
    RUN_DIR,
    SET,
    TASK_OPTION,
    VERBOSE,
    checked,
    console,
    fail,
    overrides,
    run_until_signal,
    setup,
    stop_on,
    user_errors,
)
from rolloutq.controller.config import parse_options
from rolloutq.policy_workers.backends import names_help as backend_names


@user_errors
def policy_worker_cmd(
    config: Path | None = CONFIG,
    backend: str | None = typer.Option(None, "--backend", envvar="ROLLOUTQ_BACKEND",
                                       help=f"Policy backend: {backend_names()}.", show_default="cnn"),
    backend_option: list[str] | None = BACKEND_OPTION,
    task: str | None = typer.Option(None, "--task", envvar="ROLLOUTQ_TASK",
                                    help="Fit a generic backend (cnn) to this task's observation/action layout."),
    task_option: list[str] | None = TASK_OPTION,
    policy: str | None = POLICY,
    redis_url: str | None = REDIS_URL,
    namespace: str | None = NAMESPACE,
    worker_id: str = typer.Option("", "--worker-id", help="Consumer name (default host-pid)."),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size", min=1,
                                              help="Most rows (rollouts) in one forward pass.", show_default="32"),
    max_wait_ms: float | None = typer.Option(None, "--max-wait-ms", min=0.0,
                                             help="Milliseconds a batch's first request waits for others before "
                                                  "the worker has measured the simulators' think times (after "
                                                  "that it holds only when batching pays).", show_default="5"),
    shards: int | None = typer.Option(None, "--shards", min=1, envvar="ROLLOUTQ_SHARDS",
                                      help="Request streams of this policy (docs/PROTOCOL.md §1), published in its "
                                           "metadata for simulators; every worker of a policy must use the same "
                                           "count."),
    heartbeat_file: Path | None = typer.Option(None, "--heartbeat-file", envvar="ROLLOUTQ_HEARTBEAT_FILE",
                                               help="Touch this file every 2 s while serving (for `rolloutq health`)."),
    metrics_port: int = typer.Option(0, "--metrics-port", envvar="ROLLOUTQ_METRICS_PORT",
                                     help="Serve Prometheus /metrics on this port (compose uses 9200; 0: off)."),
    sets: list[str] | None = SET,
    verbose: bool = VERBOSE,
) -> None:
    """Serve a policy from Redis without Ray (one process; stop with SIGTERM or Ctrl-C). Waits for Redis
    when it does not answer yet. Exit status 4: a setup error (unknown backend or task, missing
    checkpoint, a backend that does not fit --task's observations)."""
    setup(True, "egl")
    from rolloutq.controller.config import PolicyWorkerConfig, load
    from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings

    def settings() -> PolicyWorkerConfig:
        flags = {"backend": backend, "backend_options": parse_options(backend_option, "--backend-option"), "task": task,
                 "task_options": parse_options(task_option, "--task-option"), "policy": policy,
                 "redis": {"url": redis_url, "namespace": namespace},
                 "worker": {"shards": shards, "batch": {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms}}}
        return load(PolicyWorkerConfig, config, overrides(sets, flags), {"redis": {"url": LOCAL_REDIS}}, partial=True)

    cfg = checked(settings)
    options = cfg.backend_options
    if cfg.task:
        from rolloutq.controller.eval import EvalSettings, _backend_options

        try:
            options = _backend_options(EvalSettings(task=cfg.task, task_options=cfg.task_options,
                                                    backend=cfg.backend, backend_options=options))
        except Exception:  # the task does not resolve: the pre-flight says so
            pass
    _worker_preflight(cfg.backend, options, cfg.task, cfg.task_options, cfg.redis.url or LOCAL_REDIS)
    cfg.worker.policy, cfg.worker.worker_id = cfg.policy, worker_id
    metrics = None
    if metrics_port:
        from rolloutq.broker.consumer import default_worker_id
        from rolloutq.monitoring.metrics import serve_metrics, worker_metrics

        metrics = worker_metrics(cfg.policy, worker_id or default_worker_id(), "prometheus")
        serve_metrics(metrics_port)
    worker = PolicyWorker(PolicyWorkerSettings(backend=cfg.backend, backend_options=options, redis=cfg.redis,
                                               worker=cfg.worker), metrics=metrics)

    async def main(stop: asyncio.Event) -> None:
        if heartbeat_file is None:
            return await worker.run(stop)
        beat = asyncio.create_task(_heartbeat(worker, heartbeat_file, stop))
        try:
            await worker.run(stop)
        finally:
            beat.cancel()
            with contextlib.suppress(FileNotFoundError):
                heartbeat_file.unlink()

    run_until_signal(main)
    console.print(f"policy worker stopped: {json.dumps(worker.stats())}")


def _worker_preflight(backend: str, options: dict[str, Any], task: str, task_options: dict[str, Any],
                      redis_url: str) -> None:
    """Names, checkpoint paths and (with a task) the schema: exit 4 on a problem. A Redis that does not
    answer is said in a line and waited for (it may be starting)."""
    from rolloutq.controller.config import mask
    from rolloutq.controller.preflight import Plan, check_redis, preflight

    stop_on(preflight(Plan(backend=backend, backend_options=options, task=task or None, task_options=task_options,
                           redis_url=redis_url), redis_required=False, engines=False))
    for problem in check_redis(redis_url):
        typer.echo(f"{mask(problem)}; waiting for it (Ctrl-C to stop)", err=True)


@user_errors
def sim_worker_cmd(
    run: str = typer.Option(..., "--run", envvar="ROLLOUTQ_RUN", help="Sweep (run id) to take episodes from."),
    config: Path | None = CONFIG,
    envs: int | None = typer.Option(None, "--envs", min=1, help="Environments in this process.", show_default="4"),
    redis_url: str | None = REDIS_URL,
    namespace: str | None = NAMESPACE,
    sim_id: str = typer.Option("", "--sim-id", help="Name of this simulator (default host-pid)."),
    shared_frames: bool | None = typer.Option(
        None, "--shared-frames/--no-shared-frames",
        help="Send camera frames (arrays of 64 KiB and more) through shared memory instead of Redis. Only when the "
             "policy workers run on this host as the same user; else requests are answered frames_unavailable."),
    stay: bool = typer.Option(False, "--stay", help="Keep waiting for episodes instead of leaving when drained."),
    wait_for_sweep_s: float = typer.Option(10.0, "--wait-for-sweep-s", min=0.0,
                                           help="Seconds to wait for `rolloutq eval --run RUN` to create the sweep "
                                                "(then exit 4)."),
    metrics_port: int = typer.Option(0, "--metrics-port", envvar="ROLLOUTQ_METRICS_PORT",
                                     help="Serve Prometheus /metrics on this port (compose uses 9300; 0: off)."),
    mujoco_gl: str | None = typer.Option(None, "--mujoco-gl", envvar="MUJOCO_GL",
                                         help="Rendering: egl or osmesa.", show_default="egl"),
    sets: list[str] | None = SET,
    verbose: bool = VERBOSE,
) -> None:
    """Join a sweep as a simulator process: K envs, episodes taken from Redis until it is drained
    (nothing left to take and nothing leased by any simulator, so episodes handed back when a
    crashed simulator's lease expires still find someone to run them). Exit status 4: Redis does
    not answer, or no sweep RUN appeared within --wait-for-sweep-s."""
    from rolloutq.controller.config import SimWorkerConfig, load

    flags = {"envs_per_sim": envs, "mujoco_gl": mujoco_gl, "redis": {"url": redis_url, "namespace": namespace},
             "client": {"shared_frames": shared_frames}}
    cfg = checked(lambda: load(SimWorkerConfig, config, overrides(sets, flags), {"redis": {"url": LOCAL_REDIS}},
                                partial=True))
    setup(True, cfg.mujoco_gl)
    from rolloutq.sim_workers.worker import SimWorker, SimWorkerSettings

    cfg.client.reply_timeout_s = min(cfg.client.reply_timeout_s, cfg.client.deadline_s)
    settings = SimWorkerSettings(run=run, envs=cfg.envs_per_sim, sim_id=sim_id, exit_when_drained=not stay,
                                 wait_for_sweep_s=wait_for_sweep_s, redis=cfg.redis, client=cfg.client)
    metrics = None
    if metrics_port:
        from rolloutq.monitoring.metrics import serve_metrics, sim_metrics

        metrics = sim_metrics(sim_id or f"sim-{os.getpid()}", "", "prometheus")
        serve_metrics(metrics_port)
    worker = SimWorker(settings, metrics=metrics)
    from rolloutq.controller.preflight import check_redis

    stop_on(check_redis(cfg.redis.url or LOCAL_REDIS))

    async def main(stop: asyncio.Event) -> Any:
        if not await _sweep_appeared(settings, stop):
            return None
        return await worker.run(stop)

    summary = run_until_signal(main)
    if summary is None:
        console.print("sim worker stopped before the sweep appeared")
        return
    console.print(f"sim worker done: {json.dumps(summary)}")


async def _sweep_appeared(settings: Any, stop: asyncio.Event) -> bool:
    """Wait up to `wait_for_sweep_s` for the sweep, saying at once when it is not there yet; False when
    stopped first. No sweep by the deadline: exit 4 with one line."""
    from rolloutq.broker.connection import connect_async
    from rolloutq.broker.keys import Keys
    from rolloutq.broker.sweep import SweepQueue
    from rolloutq.controller.config import mask

    r = connect_async(settings.redis)
    try:
        queue = SweepQueue(r, settings.run, Keys(settings.redis.namespace))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.wait_for_sweep_s
        where = f"{mask(settings.redis.url or LOCAL_REDIS)} (namespace {settings.redis.namespace!r})"
        said = False
        while not stop.is_set():
            if await queue.config() is not None:
                return True
            if loop.time() >= deadline:
                raise fail(f"no sweep {settings.run!r} on {where} after {settings.wait_for_sweep_s:g} s: start "
                           f"`rolloutq eval --mode external --run {settings.run}` first, or check --run, --redis-url "
                           "and --namespace", 4)
            if not said:
                typer.echo(f"no sweep {settings.run!r} on {where} yet; waiting up to "
                           f"{settings.wait_for_sweep_s:g} s (--wait-for-sweep-s)", err=True)
                said = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        return False
    finally:
        await r.aclose()


@user_errors
def health_cmd(
    redis_url: str = typer.Option(LOCAL_REDIS, "--redis-url", envvar="ROLLOUTQ_REDIS_URL", help="Redis URL."),
    run_dir: Path | None = RUN_DIR,
    namespace: str = typer.Option("rq", "--namespace", envvar="ROLLOUTQ_NAMESPACE", help="Prefix of every Redis key."),
    policy: str = typer.Option("default", "--policy", envvar="ROLLOUTQ_POLICY", help="Policy deployment name."),
    heartbeat_file: Path = typer.Option(None, "--heartbeat-file", envvar="ROLLOUTQ_HEARTBEAT_FILE",
                                        help="Also require this file (policy-worker --heartbeat-file) to be "
                                             "fresh: a container health check."),
    max_age_s: float = typer.Option(15.0, "--max-age-s", help="A heartbeat older than this counts as down."),
    verbose: bool = VERBOSE,
) -> None:
    """Exit 0 when Redis answers and the policy has published its metadata (and, with --heartbeat-file,
    the local worker's serving loop is alive); else print why and exit 1. Needs only HGET on the
    policy's metadata hash, which every role may read."""
    import time

    from rolloutq.broker.connection import connect_sync
    from rolloutq.broker.keys import Keys
    from rolloutq.broker.settings import RedisSettings
    from rolloutq.controller.config import mask

    if heartbeat_file is not None:
        try:
            age = time.time() - heartbeat_file.stat().st_mtime
        except FileNotFoundError:
            typer.echo(f"no heartbeat at {heartbeat_file} yet: no policy worker runs here, or its model is "
                          "still loading")
            raise typer.Exit(1) from None
        if age > max_age_s:
            typer.echo(f"heartbeat {heartbeat_file} is {age:.0f}s old: the worker's loop is stuck or dead")
            raise typer.Exit(1)
    if run_dir is not None:
        from rolloutq.controller.run_folder import read_redis_url

        redis_url = read_redis_url(run_dir)
    keys = Keys(namespace)
    r = connect_sync(RedisSettings(url=redis_url, namespace=namespace, socket_timeout_s=3.0, connect_retries=1))
    try:
        if r.hget(keys.policy_meta(policy), "metadata") is None:
            typer.echo(f"no worker has published metadata for policy {policy!r} on {mask(redis_url)} "
                          f"(namespace {namespace!r}): none runs yet, or its model is still loading")
            raise typer.Exit(1)
    except typer.Exit:
        raise
    except Exception as e:
        typer.echo(f"Redis at {mask(redis_url)} did not answer: {e}")
        raise typer.Exit(1) from None
    finally:
        r.close()
    typer.echo("ok")


async def _heartbeat(worker: Any, path: Path, stop: asyncio.Event, every_s: float = 2.0) -> None:
    """Touch `path` while the worker serves: a health check that needs no Redis permissions."""
    while not stop.is_set():
        consumer = worker.consumer
        if consumer is not None and consumer.ready.is_set() and worker.error is None:
            path.touch()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
