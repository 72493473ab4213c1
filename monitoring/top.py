"""`rolloutq top`: a live terminal view of the queues and workers, straight from Redis.

For people without Grafana: the same numbers the exporter publishes (lag, pending, oldest ages,
dead letters, λ, μ, ρ, replicas) plus one row per worker from the worker stats hash. When Redis goes
away while it watches (an eval's embedded Redis stops with its run), it says so in a line and ends
with exit status 0; a Redis that does not answer at the start is an error.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

from rolloutq.broker.keys import Keys
from rolloutq.monitoring.queue import QueueProbe, Snapshot
from rolloutq.monitoring.worker_records import STALE_AFTER_S


class RedisUnreachable(Exception):
    """The Redis `top` was pointed at does not answer at the start."""


@dataclass
class TopSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "rq"
    interval_s: float = 1.0
    once: bool = False
    stale_after_s: float = STALE_AFTER_S
    shards: int = 1


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def render(snap: Snapshot) -> Any:
    """A rich renderable of one snapshot."""
    from rich.console import Group
    from rich.table import Table

    q = Table(title="rolloutq queues", title_justify="left")
    for col in ("policy", "length", "lag", "pending", "oldest undeliv. s", "oldest pending s", "dlq",
                "λ obs/s", "μ obs/s/replica", "replicas", "ρ"):
        q.add_column(col, justify="left" if col == "policy" else "right", no_wrap=col == "policy")
    w = Table(title="workers", title_justify="left")
    for col in ("policy", "worker", "served", "batches", "mean batch", "busy s", "errors", "μ obs/s",
                "age s", "state"):
        w.add_column(col, justify="left" if col in ("policy", "worker", "state") else "right",
                     no_wrap=col in ("policy", "worker"))
    for p in snap.policies:
        rho = p.utilization
        rho_s = _f(rho, "{:.2f}")
        if rho is not None and rho >= 0.8:
            rho_s = f"[bold red]{rho_s}[/]"
        q.add_row(
            p.policy,
            str(p.total("length")),
            str(p.total("lag")),
            str(p.total("pending")),
            _f(p.max_age("oldest_undelivered_age_s")),
            _f(p.max_age("oldest_pending_age_s")),
            str(p.total("dead_letters")),
            _f(p.arrival_rate),
            _f(p.service_rate_per_replica),
            f"{p.replicas_up}" + (f" (+{p.replicas_stale} stale)" if p.replicas_stale else ""),
            rho_s,
        )
        for x in p.workers:
            w.add_row(p.policy, x.id, str(x.served_total), str(x.batches_total), _f(x.mean_batch),
                      _f(x.busy_s_total), str(x.errors_total), _f(x.service_rate), _f(x.age_s),
                      "up" if x.fresh else "[red]stale[/]")
    return Group(q, w)


def snapshot_text(snap: Snapshot, width: int = 160) -> str:
    """Plain text of one snapshot (what `--once` prints)."""
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO())
    console.print(render(snap))
    return console.export_text()


def top_once(redis: Any, settings: TopSettings) -> Snapshot:
    """Two polls `interval_s` apart (so λ and μ are defined); returns the second."""
    probe = QueueProbe(redis, Keys(settings.namespace), shards=settings.shards,
                       stale_after_s=settings.stale_after_s)
    probe.poll()
    time.sleep(settings.interval_s)
    return probe.poll()


def top_main(settings: TopSettings, redis: Any = None) -> None:
    """Entry point of `rolloutq top`."""
    from rich.console import Console
    from rich.live import Live
    from rolloutq.broker.connection import REDIS_DOWN

    if redis is None:
        import redis as redis_py

        redis = redis_py.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    where = _masked(settings.redis_url)
    try:
        redis.ping()
    except REDIS_DOWN as e:
        raise RedisUnreachable(f"Redis at {where} does not answer ({e}): check --redis-url, or --run-dir of a "
                               "run that is still going") from None
    console = Console()
    if not console.is_terminal:  # piped or captured: don't squeeze the tables into 80 columns
        console = Console(width=200)
    try:
        if settings.once:
            console.print(render(top_once(redis, settings)))
            return
        probe = QueueProbe(redis, Keys(settings.namespace), shards=settings.shards,
                           stale_after_s=settings.stale_after_s)
        with Live(render(probe.poll()), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(settings.interval_s)
                live.update(render(probe.poll()), refresh=True)
    except KeyboardInterrupt:
        pass
    except REDIS_DOWN:
        console.print(f"Redis at {where} went away (the run it served has ended?); top stops", highlight=False)


def _masked(url: str) -> str:
    from rolloutq.controller.config import mask

    return mask(url)
