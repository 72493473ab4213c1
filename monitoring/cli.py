"""Typer commands `rolloutq exporter` and `rolloutq top` (the CLI edge: flags and env vars here).

Mount them in controller/cli.py:

    from rolloutq.monitoring.cli import exporter_command, top_command
    app.command("exporter")(exporter_command)
    app.command("top")(top_command)
"""

from __future__ import annotations

import logging

import typer
from rolloutq.monitoring.exporter import ExporterSettings, exporter_main
from rolloutq.monitoring.top import TopSettings, top_main

_URL = typer.Option("redis://127.0.0.1:6379/0", "--redis-url", envvar="ROLLOUTQ_REDIS_URL",
                    help="Redis to watch.")
_NS = typer.Option("rq", "--namespace", envvar="ROLLOUTQ_NAMESPACE", help="Key namespace.")


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


def top_command(
    redis_url: str = _URL,
    namespace: str = _NS,
    interval: float = typer.Option(1.0, help="Refresh interval in seconds."),
    once: bool = typer.Option(False, "--once", help="Print one snapshot (two polls one interval apart)."),
    stale_after: float = typer.Option(10.0, help="A worker whose stats are older than this is down."),
    shards: int = typer.Option(1, help="Shards per policy when its metadata does not say."),
) -> None:
    """Live terminal view of queues and workers, straight from Redis."""
    top_main(TopSettings(redis_url=redis_url, namespace=namespace, interval_s=interval, once=once,
                         stale_after_s=stale_after, shards=shards))


app = typer.Typer(help="rolloutq monitoring", no_args_is_help=True)
app.command("exporter")(exporter_command)
app.command("top")(top_command)

if __name__ == "__main__":
    app()
