"""The `rolloutq` command line: the only place that reads flags and environment variables.

Every command builds its settings dataclasses here and passes them down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="rolloutq: closed-loop evaluation of robot policies against simulators over Redis "
                       "streams, with cross-rollout micro-batching.")
console = Console(stderr=True)


def _parse_options(pairs: list[str] | None, what: str) -> dict[str, Any]:
    """`key=value` pairs; values are JSON when they parse as JSON, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise typer.BadParameter(f"{what} {pair!r} must look like key=value")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _env_passthrough(names: list[str] | None) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in names or []:
        if name not in os.environ:
            raise typer.BadParameter(f"--replica-env {name}: that variable is not set in this shell")
        env[name] = os.environ[name]
    return env


def _parse_resources(raw: str | None, what: str) -> dict[str, float]:
    """A JSON object of Ray custom resources, e.g. '{"policy_node": 1}'."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"{what} must be a JSON object such as '{{\"sim_node\": 1}}': {e}") from None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in value.items()):
        raise typer.BadParameter(f"{what} must map resource names to non-negative numbers, got {raw!r}")
    for reserved in ("CPU", "GPU", "memory"):
        if reserved in value:
            raise typer.BadParameter(f"{what}: set {reserved} with its own flag, not as a custom resource")
    return {k: float(v) for k, v in value.items()}


def _setup(verbose: bool, mujoco_gl: str) -> None:
    os.environ.setdefault("MUJOCO_GL", mujoco_gl)
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


REDIS_URL = typer.Option(None, "--redis-url", envvar="ROLLOUTQ_REDIS_URL",
                         help="Redis URL (redis:// or rediss://, password in the URL). Default: start an "
                              "embedded redis-server (eval only).")
NAMESPACE = typer.Option("rq", "--namespace", envvar="ROLLOUTQ_NAMESPACE", help="Prefix of every Redis key.")
POLICY = typer.Option("default", "--policy", envvar="ROLLOUTQ_POLICY", help="Policy deployment name.")
SHARED_FRAMES = typer.Option(False, "--shared-frames/--no-shared-frames",
                             help="Simulators send camera frames (arrays of 64 KiB and more) through shared memory "
                                  "instead of Redis. Only when every simulator runs on the policy workers' host, as "
                                  "the same user; otherwise requests are answered frames_unavailable.")
DISPATCH = typer.Option("cohort", "--dispatch", help="Batch dispatch: cohort (wait for the active rollouts; "
                        "closed loop) or deadline (Triton: full batch or oldest waited --max-wait-ms).")
POLL_MS = typer.Option(0.0, "--poll-ms", min=0.0,
                       help="While the model waits for rollouts due back (cohort dispatch), read without blocking "
                            "for up to this long after the last arrival: one core spins a few ms a cycle, the requests "
                            "skip ~1 ms of wake-ups (0: always block).")
_CLIENT_POLL_HELP = ("wait for a reply by sleeping through most of the usual round trip and polling around its "
                     "end, for up to this long past it: a core spins a few ms a step, replies skip ~1 ms of "
                     "wake-ups (0: block).")
CLIENT_POLL_MS = typer.Option(0.0, "--sim-poll-ms", min=0.0, help="Simulators " + _CLIENT_POLL_HELP)
PROM_URL = typer.Option(None, "--prometheus-url", envvar="ROLLOUTQ_PROMETHEUS_URL",
                        help="Prometheus the autoscaler reads (eval default: start a local exporter + Prometheus).")
MIN_REPLICAS = typer.Option(1, "--min-replicas", min=0, help="Autoscale: fewest policy replicas.")
MAX_REPLICAS = typer.Option(4, "--max-replicas", min=1, help="Autoscale: most policy replicas.")
MAX_SIMS = typer.Option(8, "--max-sims", min=0, help="Autoscale: most simulator actors.")
TARGET_RHO = typer.Option(0.8, "--target-utilization", help="Autoscale: keep ρ = λ/(replicas×μ) under this.")
UP_DELAY = typer.Option(5.0, "--up-delay-s", help="Autoscale: seconds a scale-up must be wanted first.")
DOWN_DELAY = typer.Option(30.0, "--down-delay-s", help="Autoscale: seconds a scale-down must be wanted first.")
ZERO_AFTER = typer.Option(0.0, "--scale-to-zero-after-s",
                          help="Autoscale: idle seconds before zero replicas (0: never).")
INTERVAL = typer.Option(2.0, "--autoscale-interval-s", help="Autoscale: seconds between decisions.")
WINDOW = typer.Option("20s", "--rate-window", help="Autoscale: PromQL range for λ and μ.")
CTL_PORT = typer.Option(0, "--controller-metrics-port", help="Controller /metrics port (0: free port, -1: none).")


def _autoscale(enabled: bool, prometheus_url: str | None, min_replicas: int, max_replicas: int, max_sims: int,
               target: float, up_delay: float, down_delay: float, zero_after: float, interval: float, window: str,
               port: int, envs_per_sim: int) -> Any:
    from controller.autoscale import AutoscaleSettings, PolicyPoolSettings, SimPoolSettings

    if min_replicas > max_replicas:
        raise typer.BadParameter("--min-replicas must not exceed --max-replicas")
    return AutoscaleSettings(
        enabled=enabled, interval_s=interval, prometheus_url=prometheus_url, window=window, metrics_port=port,
        exporter_root=os.environ.get("ROLLOUTQ_EXPORTER_ROOT"),
        policy=PolicyPoolSettings(min_replicas=min_replicas, max_replicas=max_replicas, target_utilization=target,
                                  up_delay_s=up_delay, down_delay_s=down_delay, scale_to_zero_after_s=zero_after),
        sims=SimPoolSettings(max_sims=max_sims, envs_per_sim=envs_per_sim, up_delay_s=up_delay,
                             down_delay_s=max(up_delay, down_delay / 2)),
    )


@app.command("eval")
def eval_cmd(
    episodes: int = typer.Option(8, "--episodes", "-n", min=1, help="Episodes to run, over seeds 0..N-1."),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="Results folder (summary.json, episodes.jsonl)."),
    task: str = typer.Option("g1-pickplace", "--task", help="Built-in task or adapter name (g1-pickplace, reach, "
                             "gym, isaaclab)."),
    task_option: list[str] = typer.Option(None, "--task-option", help="Task option key=value (repeatable)."),
    backend: str = typer.Option("visuomotor", "--backend",
                                help="Policy backend (visuomotor: the shipped G1 checkpoint; g1-expert, cnn, null, "
                                     "gr00t, lerobot, fixed-cost)."),
    option: list[str] = typer.Option(None, "--option", "-o", help="Backend option key=value (repeatable)."),
    policy: str = POLICY,
    sims: int = typer.Option(1, "--sims", min=1, help="Simulator actors."),
    envs_per_sim: int = typer.Option(4, "--envs-per-sim", min=1, help="Environments per simulator actor."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Policy replicas (Ray Serve)."),
    gpus_per_replica: float = typer.Option(0.0, "--gpus-per-replica", help="GPUs per policy replica."),
    cpus_per_replica: float = typer.Option(1.0, "--cpus-per-replica", min=0.0, help="CPUs per policy replica."),
    policy_resources: str = typer.Option(None, "--policy-resources",
                                         help="Ray custom resources per policy replica, JSON "
                                              """(e.g. '{"policy_node": 1}')."""),
    sim_cpus: float = typer.Option(1.0, "--sim-cpus", min=0.0, help="CPUs per simulator actor."),
    sim_gpus: float = typer.Option(0.0, "--sim-gpus", min=0.0, help="GPUs per simulator actor (rendering)."),
    sim_resources: str = typer.Option(None, "--sim-resources",
                                      help="Ray custom resources per simulator actor, JSON "
                                           """(e.g. '{"sim_node": 1}')."""),
    external: bool = typer.Option(False, "--external",
                                  help="No Ray: fill the sweep and wait for separate `policy-worker` and `sim-worker` "
                                       "processes on --redis-url (compose)."),
    no_deploy: bool = typer.Option(False, "--no-deploy",
                                   help="A policy pool already serves on --redis-url (`serve deploy`, policy-worker "
                                        "processes): start only the simulators, as Ray actors."),
    run_id: str = typer.Option("", "--run", envvar="ROLLOUTQ_RUN",
                               help="Sweep id (default: generated). Simulators join with `sim-worker --run`."),
    redis_host: str = typer.Option("", "--redis-host",
                                   help="With --address and no --redis-url: address the controller's redis-server "
                                        "listens on (default: this node's IP)."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", min=1),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0.0),
    dispatch: str = DISPATCH,
    poll_ms: float = POLL_MS,
    sim_poll_ms: float = CLIENT_POLL_MS,
    action_horizon: int = typer.Option(0, "--action-horizon", min=0,
                                       help="Steps executed per chunk (0: the policy's own, 8 for GR00T)."),
    seed_offset: int = typer.Option(0, "--seed-offset", help="First seed."),
    address: str = typer.Option(None, "--address", help="Ray cluster address (auto = running cluster)."),
    redis_url: str = REDIS_URL,
    namespace: str = NAMESPACE,
    replica_env: list[str] = typer.Option(None, "--replica-env",
                                          help="Environment variable passed to replicas (e.g. HF_TOKEN)."),
    health_check_timeout_s: float = typer.Option(300.0, "--health-check-timeout-s"),
    deadline_s: float = typer.Option(120.0, "--deadline-s", help="Per-request deadline seen by simulators."),
    shared_frames: bool = SHARED_FRAMES,
    video_episodes: int = typer.Option(4, "--video-episodes", min=0, help="Episodes recorded as GIFs."),
    timeout_s: float = typer.Option(0.0, "--timeout-s", help="Fail the run after this long (0: never)."),
    sweep_ttl_s: int = typer.Option(86400, "--sweep-ttl-s", min=0,
                                    help="Seconds the sweep's keys (config, queue, results) stay in Redis once the "
                                         "run is over (0: deleted at once)."),
    max_sim_errors: int = typer.Option(0, "--max-sim-errors", min=0,
                                       help="Episodes allowed to end in sim_error (the simulator or its adapter "
                                            "failed on every attempt; not scored). More: exit status 3 after the "
                                            "results are written."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No live progress display."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show worker and Ray logs."),
    mujoco_gl: str = typer.Option("egl", "--mujoco-gl", envvar="MUJOCO_GL", help="egl or osmesa."),
    autoscale: bool = typer.Option(False, "--autoscale",
                                   help="Size the policy pool and the sim pool from queue metrics in Prometheus "
                                        "(--replicas and --sims become starting sizes)."),
    prometheus_url: str = PROM_URL,
    min_replicas: int = MIN_REPLICAS,
    max_replicas: int = MAX_REPLICAS,
    max_sims: int = MAX_SIMS,
    target_utilization: float = TARGET_RHO,
    up_delay_s: float = UP_DELAY,
    down_delay_s: float = DOWN_DELAY,
    scale_to_zero_after_s: float = ZERO_AFTER,
    autoscale_interval_s: float = INTERVAL,
    rate_window: str = WINDOW,
    controller_metrics_port: int = CTL_PORT,
) -> None:
    """Run an evaluation: policy on Ray Serve, S sims x K envs, N episodes; writes OUT/summary.json.

    Exit status: 0 done, 1 the run failed, 130 interrupted;
    2 episodes lost to infrastructure after every attempt;
    3 more episodes ended in sim_error than --max-sim-errors (results are written for 2 and 3).
    """
    _setup(verbose, mujoco_gl)
    from broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
    from controller.errors import ControllerError
    from controller.eval import EvalSettings, run_eval
    from controller.results import human_summary, verdict
    from policy_workers.serve import ServeSettings

    settings = EvalSettings(
        episodes=episodes, out=out, task=task, task_options=_parse_options(task_option, "--task-option"),
        backend=backend, backend_options=_parse_options(option, "--option"), policy=policy, sims=sims,
        envs_per_sim=envs_per_sim, action_horizon=action_horizon, seed_offset=seed_offset, address=address,
        video_episodes=video_episodes, timeout_s=timeout_s, max_sim_errors=max_sim_errors, sweep_ttl_s=sweep_ttl_s,
        progress=not no_progress, verbose=verbose,
        mujoco_gl=mujoco_gl, sim_num_cpus=sim_cpus, sim_num_gpus=sim_gpus,
        sim_resources=_parse_resources(sim_resources, "--sim-resources"), external=external, run_id=run_id,
        deploy_policy=not no_deploy,
        redis_host=redis_host,
        redis=RedisSettings(url=redis_url, namespace=namespace),
        worker=WorkerSettings(policy=policy, poll_ms=poll_ms,
                              batch=BatchSettings(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                                                  dispatch=dispatch)),
        serve=ServeSettings(replicas=replicas, num_gpus=gpus_per_replica, num_cpus=cpus_per_replica,
                            resources=_parse_resources(policy_resources, "--policy-resources"),
                            health_check_timeout_s=health_check_timeout_s,
                            env_vars=_env_passthrough(replica_env)),
        client=ClientSettings(deadline_s=deadline_s, reply_timeout_s=min(30.0, deadline_s),
                              shared_frames=shared_frames, poll_ms=sim_poll_ms),
        autoscale=_autoscale(autoscale, prometheus_url, min_replicas, max_replicas, max_sims, target_utilization,
                             up_delay_s, down_delay_s, scale_to_zero_after_s, autoscale_interval_s, rate_window,
                             controller_metrics_port, envs_per_sim),
    )
    try:
        summary = run_eval(settings, console)
    except ControllerError as e:
        console.print(f"[red]eval failed:[/red] {e}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        raise typer.Exit(130) from None
    console.print(human_summary(summary, out))
    if summary.get("rejected_results"):
        why = ", ".join(f"{k} {n}" for k, n in sorted(summary["rejected_results"].items()))
        console.print(f"[yellow]results rejected (not counted): {why}[/yellow]", highlight=False)
    ending = verdict(summary, episodes, max_sim_errors)
    if ending.exit_code:
        console.print(f"[red]{ending.message}[/red]", highlight=False)
        raise typer.Exit(ending.exit_code)


def _run_until_signal(main: Any) -> Any:
    """Run `main(stop)` with SIGTERM/SIGINT setting `stop` (graceful shutdown)."""

    async def runner() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())


@app.command("policy-worker")
def policy_worker_cmd(
    backend: str = typer.Option("cnn", "--backend", envvar="ROLLOUTQ_BACKEND", help="Policy backend."),
    option: list[str] = typer.Option(None, "--option", "-o", help="Backend option key=value (repeatable)."),
    task: str = typer.Option("", "--task", envvar="ROLLOUTQ_TASK",
                             help="Fit a generic backend (cnn) to this task's observation/action layout."),
    task_option: list[str] = typer.Option(None, "--task-option", help="Task option key=value (e.g. image_size=64)."),
    policy: str = POLICY,
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", "--redis-url", envvar="ROLLOUTQ_REDIS_URL",
                                  help="Redis URL (redis:// or rediss://)."),
    namespace: str = NAMESPACE,
    worker_id: str = typer.Option("", "--worker-id", help="Consumer name (default host-pid)."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", min=1),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0.0),
    dispatch: str = DISPATCH,
    poll_ms: float = POLL_MS,
    claim_idle_ms: int = typer.Option(60_000, "--claim-idle-ms", help="Re-claim requests idle this long."),
    max_deliveries: int = typer.Option(3, "--max-deliveries", help="Dead-letter after this many deliveries."),
    shards: int = typer.Option(1, "--shards", min=1, envvar="ROLLOUTQ_SHARDS",
                               help="Request streams of this policy (docs/PROTOCOL.md §1): the worker reads all of "
                                    "them and publishes the count in the policy's metadata hash, where simulators "
                                    "read it. Every worker of a policy must use the same count."),
    heartbeat_file: Path = typer.Option(None, "--heartbeat-file", envvar="ROLLOUTQ_HEARTBEAT_FILE",
                                        help="Touch this file every 2 s while serving (for `rolloutq health`)."),
    metrics_port: int = typer.Option(0, "--metrics-port", envvar="ROLLOUTQ_METRICS_PORT",
                                     help="Serve Prometheus /metrics on this port (compose uses 9200; 0: off)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve a policy from Redis without Ray (one process; stop with SIGTERM)."""
    _setup(True, "egl")
    from broker.settings import BatchSettings, RedisSettings, WorkerSettings
    from policy_workers.loop import PolicyWorker, PolicyWorkerSettings

    options = _parse_options(option, "--option")
    if task:
        from controller.eval import EvalSettings, _backend_options

        options = _backend_options(EvalSettings(task=task, task_options=_parse_options(task_option, "--task-option"),
                                                backend=backend, backend_options=options))
    settings = PolicyWorkerSettings(
        backend=backend, backend_options=options,
        redis=RedisSettings(url=redis_url, namespace=namespace),
        worker=WorkerSettings(policy=policy, worker_id=worker_id, claim_idle_ms=claim_idle_ms,
                              max_deliveries=max_deliveries, poll_ms=poll_ms, shards=shards,
                              batch=BatchSettings(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                                                  dispatch=dispatch)),
    )
    metrics = None
    if metrics_port:
        from broker.consumer import default_worker_id
        from monitoring.metrics import serve_metrics, worker_metrics

        metrics = worker_metrics(policy, worker_id or default_worker_id(), "prometheus")
        serve_metrics(metrics_port)
    worker = PolicyWorker(settings, metrics=metrics)

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

    _run_until_signal(main)
    console.print(f"policy worker stopped: {json.dumps(worker.stats())}")


@app.command("sim-worker")
def sim_worker_cmd(
    run: str = typer.Option(..., "--run", envvar="ROLLOUTQ_RUN", help="Sweep (run id) to take episodes from."),
    envs: int = typer.Option(4, "--envs", min=1, help="Environments in this process."),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", "--redis-url", envvar="ROLLOUTQ_REDIS_URL"),
    namespace: str = NAMESPACE,
    sim_id: str = typer.Option("", "--sim-id", help="Name of this simulator (default host-pid)."),
    deadline_s: float = typer.Option(120.0, "--deadline-s"),
    shared_frames: bool = SHARED_FRAMES,
    poll_ms: float = typer.Option(0.0, "--poll-ms", min=0.0, help="This simulator's clients " + _CLIENT_POLL_HELP),
    stay: bool = typer.Option(False, "--stay", help="Keep waiting for episodes instead of leaving when drained."),
    wait_for_sweep_s: float = typer.Option(60.0, "--wait-for-sweep-s", min=0.0,
                                           help="How long to wait for the controller to create the sweep."),
    metrics_port: int = typer.Option(0, "--metrics-port", envvar="ROLLOUTQ_METRICS_PORT",
                                     help="Serve Prometheus /metrics on this port (compose uses 9300; 0: off)."),
    mujoco_gl: str = typer.Option("egl", "--mujoco-gl", envvar="MUJOCO_GL"),
) -> None:
    """Join a sweep as a simulator process: K envs, episodes taken from Redis until it is drained
    (nothing left to take and nothing leased by any simulator, so episodes handed back when a
    crashed simulator's lease expires still find someone to run them)."""
    _setup(True, mujoco_gl)
    from broker.settings import ClientSettings, RedisSettings
    from sim_workers.worker import SimWorker, SimWorkerSettings

    settings = SimWorkerSettings(run=run, envs=envs, sim_id=sim_id, exit_when_drained=not stay,
                                 wait_for_sweep_s=wait_for_sweep_s,
                                 redis=RedisSettings(url=redis_url, namespace=namespace),
                                 client=ClientSettings(deadline_s=deadline_s, reply_timeout_s=min(30.0, deadline_s),
                                                       shared_frames=shared_frames, poll_ms=poll_ms))
    metrics = None
    if metrics_port:
        from monitoring.metrics import serve_metrics, sim_metrics

        metrics = sim_metrics(sim_id or f"sim-{os.getpid()}", "", "prometheus")
        serve_metrics(metrics_port)
    worker = SimWorker(settings, metrics=metrics)
    summary = _run_until_signal(worker.run)
    console.print(f"sim worker done: {json.dumps(summary)}")


@app.command("health")
def health_cmd(
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", "--redis-url", envvar="ROLLOUTQ_REDIS_URL"),
    namespace: str = NAMESPACE,
    policy: str = POLICY,
    heartbeat_file: Path = typer.Option(None, "--heartbeat-file", envvar="ROLLOUTQ_HEARTBEAT_FILE",
                                        help="Also require this file (policy-worker --heartbeat-file) to be "
                                             "fresh: a container health check."),
    max_age_s: float = typer.Option(15.0, "--max-age-s", help="A heartbeat older than this counts as down."),
) -> None:
    """Exit 0 when Redis answers and the policy has published its metadata (and, with --heartbeat-file,
    the local worker's serving loop is alive); else print why and exit 1. Needs only HGET on the
    policy's metadata hash, which every role may read."""
    import time

    from broker.connection import connect_sync
    from broker.keys import Keys
    from broker.settings import RedisSettings

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


@app.command("controller")
def controller_cmd(
    prometheus_url: str = typer.Option(..., "--prometheus-url", envvar="ROLLOUTQ_PROMETHEUS_URL",
                                       help="Prometheus that scrapes the rolloutq exporter."),
    address: str = typer.Option("auto", "--address", envvar="RAY_ADDRESS", help="Ray cluster address."),
    app_name: str = typer.Option("rolloutq-policy", "--app", help="Ray Serve application of the policy pool "
                                 "(deployed with external scaling enabled, as `rolloutq eval --autoscale` does)."),
    policy: str = POLICY,
    run: str = typer.Option(None, "--run", envvar="ROLLOUTQ_RUN",
                            help="Also size the sim pool of this sweep (SimActors on Ray); default: policy pool only."),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", "--redis-url", envvar="ROLLOUTQ_REDIS_URL"),
    namespace: str = NAMESPACE,
    envs_per_sim: int = typer.Option(4, "--envs-per-sim", min=1),
    sim_num_cpus: float = typer.Option(1.0, "--sim-num-cpus"),
    min_replicas: int = MIN_REPLICAS,
    max_replicas: int = MAX_REPLICAS,
    max_sims: int = MAX_SIMS,
    target_utilization: float = TARGET_RHO,
    up_delay_s: float = UP_DELAY,
    down_delay_s: float = DOWN_DELAY,
    scale_to_zero_after_s: float = ZERO_AFTER,
    interval_s: float = typer.Option(2.0, "--interval-s", help="Seconds between decisions."),
    rate_window: str = WINDOW,
    metrics_port: int = typer.Option(9110, "--metrics-port", envvar="ROLLOUTQ_CONTROLLER_PORT",
                                     help="Port of the controller's /metrics (-1: none)."),
    metrics_addr: str = typer.Option("0.0.0.0", "--metrics-addr"),
    decisions_file: Path = typer.Option(None, "--decisions-file", help="Append every decision (JSON lines)."),
    mujoco_gl: str = typer.Option("egl", "--mujoco-gl", envvar="MUJOCO_GL"),
) -> None:
    """Autoscale a running stack: policy replicas on Ray Serve (and sims of --run) from Prometheus."""
    _setup(True, mujoco_gl)
    import ray

    from broker.connection import connect_async
    from broker.keys import Keys
    from broker.settings import RedisSettings
    from broker.sweep import SweepQueue
    from controller.control import Controller, ControllerMetrics
    from controller.pools import RaySimPool, ServePolicyPool
    from sim_workers.actor import SimActor
    from sim_workers.worker import SimWorkerSettings

    settings = _autoscale(True, prometheus_url, min_replicas, max_replicas, max_sims, target_utilization,
                          up_delay_s, down_delay_s, scale_to_zero_after_s, interval_s, rate_window, metrics_port,
                          envs_per_sim)
    settings.metrics_addr = metrics_addr
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"MUJOCO_GL": mujoco_gl, "PYOPENGL_PLATFORM": mujoco_gl}})
    metrics = ControllerMetrics(policy)
    if metrics_port >= 0:
        bound = metrics.serve(metrics_port, metrics_addr)
        console.print(f"controller metrics on http://{metrics_addr}:{bound}/metrics")
    redis = RedisSettings(url=redis_url, namespace=namespace)

    async def main(stop: Any) -> None:
        r = connect_async(redis)
        pool = sweep = None
        if run:
            sweep = SweepQueue(r, run, Keys(namespace))
            remote = ray.remote(num_cpus=sim_num_cpus, max_concurrency=4)(SimActor)
            pool = RaySimPool(lambda sim_id: remote.remote(SimWorkerSettings(run=run, redis=redis, envs=envs_per_sim,
                                                                              sim_id=sim_id)), ray, prefix=f"{run}-sim")
        ctl = Controller(settings, policy, ServePolicyPool(app_name), pool, sweep, decisions_file=decisions_file,
                         metrics=metrics)
        try:
            await ctl.run(stop)
        finally:
            if pool is not None:
                pool.kill_all()
            await r.aclose()
            metrics.stop()

    _run_until_signal(main)


def _mount_monitoring() -> None:
    from monitoring.cli import exporter_command, top_command

    app.command("exporter")(exporter_command)
    app.command("top")(top_command)


_mount_monitoring()


def main() -> None:  # pragma: no cover
    sys.exit(app())
