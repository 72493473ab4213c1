"""Typer commands `rolloutq exporter` and `rolloutq top` (the CLI edge: flags and env vars here).

Mount them in controller/cli.py:

    from rolloutq.monitoring.cli import exporter_command, top_command
    app.command("exporter")(exporter_command)
    app.command("top")(top_command)
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rolloutq.controller.cli_shared import RUN_DIR, VERBOSE, fail, user_errors
from rolloutq.monitoring.exporter import ExporterSettings, exporter_main
from rolloutq.monitoring.top import RedisUnreachable, TopSettings, top_main

_URL = typer.Option("redis://127.0.0.1:6379/0", "--redis-url", envvar="ROLLOUTQ_REDIS_URL",
                    help="Redis to watch (an eval's own Redis: --run-dir).")
_NS = typer.Option("rq", "--namespace", envvar="ROLLOUTQ_NAMESPACE", help="Key namespace.")


@user_errors
def exporter_command(
    redis_url: str = _URL,
    namespace: str = _NS,
    port: int = typer.Option(9108, envvar="ROLLOUTQ_EXPORTER_PORT", help="Port of /metrics."),
    addr: str = typer.Option("0.0.0.0", help="Address to bind."),
    interval: float = typer.Option(2.0, help="Seconds between Redis polls."),
    stale_after: float = typer.Option(10.0, help="A worker whose stats are older than this is down."),
    shards: int = typer.Option(1, help="Shards per policy when its metadata does not say."),
    policy: list[str] = typer.Option([], help="Also watch this policy (repeatable)."),
    redis62: bool = typer.Option(False, "--redis62", help="Count lag by scanning (Redis 6.2 path)."),
    verbose: bool = VERBOSE,
) -> None:
    """Publish queue depth, lag, pending, ages, dead letters, λ, μ, ρ and replicas on /metrics."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    exporter_main(
        ExporterSettings(
            redis_url=redis_url, namespace=namespace, port=port, addr=addr, interval_s=interval,
            stale_after_s=stale_after, shards=shards, policies=tuple(policy),
            use_xinfo_lag=False if redis62 else None,
        )
    )


@user_errors
def top_command(
    redis_url: str = _URL,
    run_dir: Path | None = RUN_DIR,
    namespace: str = _NS,
    interval: float = typer.Option(1.0, help="Refresh interval in seconds."),
    once: bool = typer.Option(False, "--once", help="Print one snapshot (two polls one interval apart)."),
    stale_after: float = typer.Option(10.0, help="A worker whose stats are older than this is down."),
    shards: int = typer.Option(1, help="Shards per policy when its metadata does not say."),
    verbose: bool = VERBOSE,
) -> None:
    """Live terminal view of queues and workers, straight from Redis. When that Redis goes away (the
    watched eval ended) it prints a line and exits 0; a Redis that does not answer at the start: exit 1."""
    if run_dir is not None:
        from rolloutq.controller.run_folder import read_redis_url

        redis_url = read_redis_url(run_dir)
    try:
        top_main(TopSettings(redis_url=redis_url, namespace=namespace, interval_s=interval, once=once,
                             stale_after_s=stale_after, shards=shards))
    except RedisUnreachable as e:
        raise fail(str(e)) from None


app = typer.Typer(help="rolloutq monitoring", no_args_is_help=True)
app.command("exporter")(exporter_command)
app.command("top")(top_command)

if __name__ == "__main__":
    app()
