"""What the commands of the CLI share: the options every command spells the same way, and the
steps from flags to settings (configuration errors end a command with one line, exit status 2).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rolloutq.controller.config import ConfigError, merge, parse_sets

console = Console(stderr=True)
T = TypeVar("T")
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def setup(verbose: bool, mujoco_gl: str) -> None:
    os.environ.setdefault("MUJOCO_GL", mujoco_gl)
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def checked(make: Callable[[], T]) -> T:
    """`make()`; a configuration error ends the command with one line and exit status 2."""
    try:
        return make()
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def overrides(sets: list[str] | None, flags: dict[str, Any], environment: dict[str, Any] | None = None) -> dict:
    """Layers over the file, lowest first: the environment, `--set key=value`, the named flags."""
    return merge(environment, parse_sets(sets), flags)


CONFIG = typer.Option(None, "--config", "-c", metavar="FILE",
                      help="Configuration file, TOML or YAML (`rolloutq config show` prints one); flags override it.")
SET = typer.Option(None, "--set", metavar="KEY=VALUE",
                   help="Set any key of the configuration file, e.g. serve.replicas=2 (repeatable).")
REDIS_URL = typer.Option(None, "--redis-url", envvar="ROLLOUTQ_REDIS_URL",
                         help="Redis URL (redis:// or rediss://, password in the URL).",
                         show_default=f"eval: an embedded redis-server; others: {LOCAL_REDIS}")
NAMESPACE = typer.Option(None, "--namespace", envvar="ROLLOUTQ_NAMESPACE", help="Prefix of every Redis key.",
                         show_default="rq")
POLICY = typer.Option(None, "--policy", envvar="ROLLOUTQ_POLICY", help="Policy deployment name.",
                      show_default="default")
TASK_OPTION = typer.Option(None, "--task-option", metavar="KEY=VALUE", help="Task option (repeatable).")
BACKEND_OPTION = typer.Option(None, "--backend-option", "--option", "-o", metavar="KEY=VALUE",
                              help="Backend option (repeatable).")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Show worker and Ray logs.")


def run_until_signal(main: Any) -> Any:
    """Run `main(stop)` with SIGTERM/SIGINT setting `stop` (graceful shutdown)."""

    async def runner() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())
