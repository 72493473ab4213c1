"""What the commands of the CLI share: the options every command spells the same way, the steps
from flags to settings (configuration errors end a command with one line, exit status 2), and the
rule that a user's mistake ends a command with one line `error: ...`, never a traceback (`--verbose`
shows it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rolloutq.controller.config import ConfigError, mask, merge, parse_sets
from rolloutq.controller.preflight import SETUP_ERROR

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
VERBOSE = typer.Option(False, "--verbose", "-v", help="Show worker and Ray logs, and the traceback of an error.")
RUN_DIR = typer.Option(None, "--run-dir", metavar="DIR",
                       help="The --out folder of a running `rolloutq eval`: use the Redis URL it wrote there "
                            "(redis.url) instead of --redis-url.")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` (passwords in URLs masked); raise what this returns to end the command."""
    typer.echo(f"error: {mask(message)}", err=True)
    return typer.Exit(code)


def stop_on(problems: list[str]) -> None:
    """End the command with exit status SETUP_ERROR when the pre-flight found problems, one line each."""
    for p in problems:
        typer.echo(f"error: {mask(p)}", err=True)
    if problems:
        raise typer.Exit(SETUP_ERROR)


def _user_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(errors a user's setup causes: exit SETUP_ERROR, every other error of the project: exit 1)."""
    from redis.exceptions import RedisError
    from rolloutq.broker.errors import BrokerError
    from rolloutq.controller.errors import ControllerError
    from rolloutq.controller.run_folder import RunFolderError
    from rolloutq.policy_workers.errors import (
        BackendLoadError,
        BackendNotFound,
        BackendUnavailable,
        PolicyWorkerError,
        SchemaMismatch,
    )
    from rolloutq.sim_workers.errors import SimWorkerError, TaskNotFound, TaskUnavailable

    setup_errors = (BackendNotFound, BackendUnavailable, BackendLoadError, SchemaMismatch, TaskNotFound,
                    TaskUnavailable, RunFolderError)
    return setup_errors, (ControllerError, PolicyWorkerError, SimWorkerError, BrokerError, RedisError, TimeoutError,
                          PermissionError)


def user_errors(command: Callable[..., T]) -> Callable[..., T]:
    """`command` ending with one line `error: ...` and a non-zero exit status on a user's error (the
    traceback too when it was given `verbose=True`), and with exit status 130 on Ctrl-C."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> T:
        setup_errors, errors = _user_errors()
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except errors as e:
            if kwargs.get("verbose"):
                traceback.print_exc()
            text = " ".join(str(e).split()) or type(e).__name__
            raise fail(text, SETUP_ERROR if isinstance(e, setup_errors) else 1) from None

    return run


def run_until_signal(main: Any) -> Any:
    """Run `main(stop)` with SIGTERM/SIGINT setting `stop` (graceful shutdown)."""

    async def runner() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())
