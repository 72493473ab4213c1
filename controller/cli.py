"""The `rolloutq` command line: the only place that reads flags and environment variables.

Every command reads one configuration file (`--config`, see `rolloutq.controller.config`) with a few flags
over it, builds its settings dataclasses here and passes them down. `eval`, `config show` and
`controller` live here; the one-process commands in `rolloutq.controller.cli_workers`, the monitoring
commands in `rolloutq.monitoring.cli`.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
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
    stop_on,
    user_errors,
)
from rolloutq.controller.config import Mode, parse_options
from rolloutq.policy_workers.backends import names_help as backend_names
from rolloutq.sim_workers.tasks import names_help as task_names

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="rolloutq: closed-loop evaluation of robot policies against simulators over Redis "
                       "streams, with cross-rollout micro-batching.")
config_app = typer.Typer(no_args_is_help=True, help="The configuration file that every command reads (--config).")
app.add_typer(config_app, name="config")


@dataclass
class EvalFlags:
    """What `rolloutq eval` (and `config show`) was given: a file and the overrides of its keys."""

    config: Path | None
    overrides: dict[str, Any]
    overwrite: bool = False
    """`--out` may hold an earlier run's results: replace them."""


def _eval_flags(
    config: Path | None = CONFIG,
    episodes: int | None = typer.Option(None, "--episodes", "-n", min=1,
                                        help="Episodes to run, over seeds 0..N-1 (--set seed_offset=K: K..K+N-1).",
                                        show_default="8"),
    out: Path | None = typer.Option(None, "--out", help="Results folder (summary.json, episodes.jsonl, config.toml, "
                                    "report, redis.url); it must be empty or new unless --overwrite.",
                                    show_default="runs/latest"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Let --out name a folder an earlier run wrote to: its "
                                   "results (summary, episodes, videos, report, config.toml) are deleted first."),
    task: str | None = typer.Option(None, "--task", help=f"Task: {task_names()}.",
                                    show_default="g1-pickplace"),
    task_option: list[str] | None = TASK_OPTION,
    backend: str | None = typer.Option(None, "--backend", help=f"Policy backend: {backend_names()} (visuomotor: "
                                       "the shipped G1 checkpoint).", show_default="visuomotor"),
    backend_option: list[str] | None = BACKEND_OPTION,
    mode: Mode | None = typer.Option(None, "--mode", help="embedded: local Ray, embedded Redis, the policy deployed on "
                                     "Serve. external: no Ray, policy-worker and sim-worker processes on --redis-url. "
                                     "attach: a policy pool serves on --redis-url, simulators run as Ray actors.",
                                     show_default="embedded"),
    redis_url: str | None = REDIS_URL,
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (auto: the running cluster).",
                                       show_default="start a local Ray"),
    run: str | None = typer.Option(None, "--run", envvar="ROLLOUTQ_RUN",
                                   help="Sweep id (default: generated); simulators join with `sim-worker --run`."),
    sims: int | None = typer.Option(None, "--sims", min=1, help="Simulator actors.", show_default="1"),
    envs_per_sim: int | None = typer.Option(None, "--envs-per-sim", min=1,
                                            help="Environments per simulator.", show_default="4"),
    autoscale: bool = typer.Option(False, "--autoscale", help="Size the policy and sim pools from queue metrics in "
                                   "Prometheus, as the file's autoscale table says (sims and replicas become "
                                   "starting sizes)."),
    max_sim_errors: int | None = typer.Option(None, "--max-sim-errors", min=0,
                                              help="Episodes allowed to end in sim_error (the simulator failed on "
                                                   "every attempt; not scored); more: exit status 3.",
                                              show_default="0"),
    sets: list[str] | None = SET,
    verbose: bool = VERBOSE,
) -> EvalFlags:
    flags = {"episodes": episodes, "out": out, "task": task,
             "task_options": parse_options(task_option, "--task-option"), "backend": backend,
             "backend_options": parse_options(backend_option, "--backend-option"),
             "mode": mode.value if mode else None, "redis": {"url": redis_url}, "address": address, "run_id": run,
             "sims": sims, "envs_per_sim": envs_per_sim,
             "max_sim_errors": max_sim_errors, "verbose": verbose or None,
             "autoscale": {"enabled": autoscale or None}}
    environment = {"mujoco_gl": os.environ.get("MUJOCO_GL"),
                   "autoscale": {"exporter_root": os.environ.get("ROLLOUTQ_EXPORTER_ROOT")}}
    return EvalFlags(config, overrides(sets, flags, environment), overwrite)


def _with_eval_flags(command: Callable[[EvalFlags], None]) -> Callable[..., None]:
    """`command(EvalFlags)` as a typer command whose options are `_eval_flags`'s parameters, so that
    `eval` and `config show` take the same flags from one list."""

    @user_errors
    def run(**given: Any) -> None:
        command(checked(lambda: _eval_flags(**given)))

    run.__signature__ = inspect.signature(_eval_flags, eval_str=True).replace(  # type: ignore[attr-defined]
        return_annotation=inspect.Signature.empty)
    run.__annotations__ = {k: v for k, v in typing.get_type_hints(_eval_flags).items() if k != "return"}
    run.__doc__, run.__name__ = command.__doc__, command.__name__
    return run


def _eval_settings(flags: EvalFlags) -> Any:
    from rolloutq.controller.config import eval_settings

    return checked(lambda: eval_settings(flags.config, flags.overrides))


@_with_eval_flags
def eval_cmd(flags: EvalFlags) -> None:
    """Run an evaluation: policy on Ray Serve, S sims x K envs, N episodes; writes OUT/summary.json and
    OUT/config.toml (what ran). Everything else is in the configuration file (`rolloutq config show`).

    Exit status: 0 done, 1 the run failed, 130 interrupted;
    2 a wrong flag or configuration (nothing ran);
    3 more episodes ended in sim_error than --max-sim-errors (results are written for 3 and 5);
    4 a setup error found before anything started (unknown backend or task, missing checkpoint,
    Redis not answering, a policy that does not fit the task's observations, --out not empty);
    5 episodes lost to infrastructure after every attempt.
    """
    from rolloutq.controller.config import replica_env, to_toml

    settings = _eval_settings(flags)
    settings.serve.env_vars = checked(lambda: replica_env(settings.replica_env, os.environ))
    setup(settings.verbose, settings.mujoco_gl)
    _preflight(settings)
    from rolloutq.controller.errors import ControllerError
    from rolloutq.controller.eval import run_eval
    from rolloutq.controller.results import human_summary, verdict
    from rolloutq.controller.run_folder import prepare_out, write_redis_url

    out = settings.out
    prepare_out(out, flags.overwrite)
    (out / "config.toml").write_text(to_toml(settings))
    if settings.redis.url:
        write_redis_url(out, settings.redis.url)
    console.print(f"[dim]watch it: rolloutq top --run-dir {out}[/dim]", highlight=False, soft_wrap=True)
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
    ending = verdict(summary, settings.episodes, settings.max_sim_errors)
    if ending.exit_code:
        console.print(f"[red]{ending.message}[/red]", highlight=False)
        raise typer.Exit(ending.exit_code)


def _preflight(s: Any) -> None:
    """Stop before Ray, a model or a simulator starts when the run cannot work (exit status 4)."""
    from rolloutq.controller.preflight import Plan, preflight, published_schema

    plan = Plan(backend=s.backend if s.mode == "embedded" else None, backend_options=dict(s.backend_options),
                task=s.task, task_options=dict(s.task_options), redis_url=s.redis.url)
    # The simulators run in this Python unless they run on a Ray cluster or are separate processes.
    local_sims = s.mode != "external" and not s.address
    stop_on(preflight(plan, schemas=False, engines=local_sims))  # before the slow import below
    if s.mode == "embedded":
        from rolloutq.controller.eval import _backend_options

        plan.backend_options = _backend_options(s)
    elif s.redis.url:
        plan.policy_schema = published_schema(s.redis.url, s.redis.namespace, s.policy)
    plan.redis_url = None  # checked above
    stop_on(preflight(plan, engines=False))


@_with_eval_flags
def config_show_cmd(flags: EvalFlags) -> None:
    """Print the configuration `rolloutq eval` would run with these flags, as TOML (passwords masked).
    Save it, edit it, and run it with `rolloutq eval --config FILE`."""
    from rolloutq.controller.config import to_toml

    typer.echo(to_toml(_eval_settings(flags)), nl=False)


app.command("eval")(eval_cmd)
config_app.command("show")(config_show_cmd)


@app.command("controller")
@user_errors
def controller_cmd(
    config: Path | None = CONFIG,
    prometheus_url: str | None = typer.Option(None, "--prometheus-url", envvar="ROLLOUTQ_PROMETHEUS_URL",
                                              help="Prometheus that scrapes the rolloutq exporter (or "
                                                   "autoscale.prometheus_url in the file)."),
    address: str = typer.Option("auto", "--address", envvar="RAY_ADDRESS", help="Ray cluster address."),
    app_name: str = typer.Option("rolloutq-policy", "--app", help="Ray Serve application of the policy pool "
                                 "(deployed with external scaling enabled, as `rolloutq eval --autoscale` does)."),
    policy: str | None = POLICY,
    run: str | None = typer.Option(None, "--run", envvar="ROLLOUTQ_RUN",
                                   help="Also size the sim pool of this sweep (SimActors on Ray); default: policy "
                                        "pool only."),
    redis_url: str | None = REDIS_URL,
    namespace: str | None = NAMESPACE,
    metrics_port: int | None = typer.Option(None, "--metrics-port", envvar="ROLLOUTQ_CONTROLLER_PORT",
                                            help="Port of the controller's /metrics (-1: none).", show_default="9110"),
    decisions_file: Path | None = typer.Option(None, "--decisions-file", help="Append every decision (JSON lines)."),
    sets: list[str] | None = SET,
    verbose: bool = VERBOSE,
) -> None:
    """Autoscale a running stack: policy replicas on Ray Serve (and sims of --run) from Prometheus,
    as the configuration file's autoscale tables say."""
    from rolloutq.controller.config import eval_settings

    flags = {"policy": policy, "redis": {"url": redis_url, "namespace": namespace},
             "autoscale": {"enabled": True, "prometheus_url": prometheus_url, "metrics_port": metrics_port}}
    base = {"redis": {"url": LOCAL_REDIS}, "autoscale": {"metrics_port": 9110, "metrics_addr": "0.0.0.0"}}
    environment = {"mujoco_gl": os.environ.get("MUJOCO_GL")}
    s = checked(lambda: eval_settings(config, overrides(sets, flags, environment), base))
    settings, redis = s.autoscale, s.redis
    if not settings.prometheus_url:
        typer.echo("error: the controller needs a Prometheus: --prometheus-url or autoscale.prometheus_url in the file",
                   err=True)
        raise typer.Exit(2)
    setup(True, s.mujoco_gl)
    from rolloutq.controller.preflight import check_redis

    stop_on(check_redis(s.redis.url or LOCAL_REDIS))
    import ray
    from rolloutq.broker.connection import connect_async
    from rolloutq.broker.keys import Keys
    from rolloutq.broker.sweep import SweepQueue
    from rolloutq.controller.control import Controller, ControllerMetrics
    from rolloutq.controller.pools import RaySimPool, ServePolicyPool
    from rolloutq.sim_workers.actor import SimActor
    from rolloutq.sim_workers.worker import SimWorkerSettings

    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"MUJOCO_GL": s.mujoco_gl, "PYOPENGL_PLATFORM": s.mujoco_gl}})
    metrics = ControllerMetrics(s.policy)
    if settings.metrics_port >= 0:
        bound = metrics.serve(settings.metrics_port, settings.metrics_addr)
        console.print(f"controller metrics on http://{settings.metrics_addr}:{bound}/metrics")

    async def main(stop: Any) -> None:
        r = connect_async(redis)
        pool = sweep = None
        if run:
            sweep = SweepQueue(r, run, Keys(redis.namespace))
            remote = ray.remote(num_cpus=s.sim_num_cpus, max_concurrency=4)(SimActor)
            pool = RaySimPool(lambda sim_id: remote.remote(SimWorkerSettings(run=run, redis=redis, envs=s.envs_per_sim,
                                                                              sim_id=sim_id)), ray, prefix=f"{run}-sim")
        ctl = Controller(settings, s.policy, ServePolicyPool(app_name), pool, sweep, decisions_file=decisions_file,
                         metrics=metrics)
        try:
            await ctl.run(stop)
        finally:
            if pool is not None:
                pool.kill_all()
            await r.aclose()
            metrics.stop()

    run_until_signal(main)


def _mount() -> None:
    from rolloutq.controller.cli_workers import health_cmd, policy_worker_cmd, sim_worker_cmd
    from rolloutq.monitoring.cli import exporter_command, top_command

    app.command("policy-worker")(policy_worker_cmd)
    app.command("sim-worker")(sim_worker_cmd)
    app.command("health")(health_cmd)
    app.command("exporter")(exporter_command)
    app.command("top")(top_command)


_mount()


def main() -> None:  # pragma: no cover
    sys.exit(app())
