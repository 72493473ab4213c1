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
    SET,
    TASK_OPTION,
    VERBOSE,
    checked,
    console,
    overrides,
    run_until_signal,
    setup,
)
from rolloutq.controller.config import parse_options
from rolloutq.policy_workers.backends import names_help as backend_names


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
                                             help="How long a batch's first request waits for others.",
                                             show_default="5"),
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
    """Serve a policy from Redis without Ray (one process; stop with SIGTERM)."""
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

        options = _backend_options(EvalSettings(task=cfg.task, task_options=cfg.task_options, backend=cfg.backend,
                                                backend_options=options))
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
    wait_for_sweep_s: float = typer.Option(60.0, "--wait-for-sweep-s", min=0.0,
                                           help="How long to wait for the controller to create the sweep."),
    metrics_port: int = typer.Option(0, "--metrics-port", envvar="ROLLOUTQ_METRICS_PORT",
                                     help="Serve Prometheus /metrics on this port (compose uses 9300; 0: off)."),
    mujoco_gl: str | None = typer.Option(None, "--mujoco-gl", envvar="MUJOCO_GL",
                                         help="Rendering: egl or osmesa.", show_default="egl"),
    sets: list[str] | None = SET,
) -> None:
    """Join a sweep as a simulator process: K envs, episodes taken from Redis until it is drained
    (nothing left to take and nothing leased by any simulator, so episodes handed back when a
    crashed simulator's lease expires still find someone to run them)."""
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
    summary = run_until_signal(worker.run)
    console.print(f"sim worker done: {json.dumps(summary)}")


def health_cmd(
    redis_url: str = typer.Option(LOCAL_REDIS, "--redis-url", envvar="ROLLOUTQ_REDIS_URL", help="Redis URL."),
    namespace: str = typer.Option("rq", "--namespace", envvar="ROLLOUTQ_NAMESPACE", help="Prefix of every Redis key."),
    policy: str = typer.Option("default", "--policy", envvar="ROLLOUTQ_POLICY", help="Policy deployment name."),
    heartbeat_file: Path = typer.Option(None, "--heartbeat-file", envvar="ROLLOUTQ_HEARTBEAT_FILE",
                                        help="Also require this file (policy-worker --heartbeat-file) to be "
                                             "fresh: a container health check."),
    max_age_s: float = typer.Option(15.0, "--max-age-s", help="A heartbeat older than this counts as down."),
) -> None:
    """Exit 0 when Redis answers and the policy has published its metadata (and, with --heartbeat-file,
    the local worker's serving loop is alive); else print why and exit 1. Needs only HGET on the
    policy's metadata hash, which every role may read."""
    import time

    from rolloutq.broker.connection import connect_sync
    from rolloutq.broker.keys import Keys
    from rolloutq.broker.settings import RedisSettings

    if heartbeat_file is not None:
        try:
            age = time.time() - heartbeat_file.stat().st_mtime
        except FileNotFoundError:
            console.print(f"no heartbeat at {heartbeat_file} yet (model still loading?)")
            raise typer.Exit(1) from None
        if age > max_age_s:
            console.print(f"heartbeat {heartbeat_file} is {age:.0f}s old: the worker's loop is stuck or dead")
            raise typer.Exit(1)
    keys = Keys(namespace)
    r = connect_sync(RedisSettings(url=redis_url, namespace=namespace, socket_timeout_s=3.0, connect_retries=1))
    try:
        if r.hget(keys.policy_meta(policy), "metadata") is None:
            console.print(f"policy {policy!r} has published no metadata yet (model still loading?)")
            raise typer.Exit(1)
    except typer.Exit:
        raise
    except Exception as e:
        console.print(f"Redis at {redis_url.split('@')[-1]} did not answer: {e}")
        raise typer.Exit(1) from None
    finally:
        r.close()
    console.print("ok")


async def _heartbeat(worker: Any, path: Path, stop: asyncio.Event, every_s: float = 2.0) -> None:
    """Touch `path` while the worker serves: a health check that needs no Redis permissions."""
    while not stop.is_set():
        consumer = worker.consumer
        if consumer is not None and consumer.ready.is_set() and worker.error is None:
            path.touch()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
