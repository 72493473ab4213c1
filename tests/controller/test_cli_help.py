"""Every option of every command says what it does in `--help`, and `rolloutq eval --help` stays short
(under 20 options) and documents its exit statuses."""

from __future__ import annotations

import os
import subprocess
import sys

import typer.main
from rolloutq.controller.cli import app


def _commands() -> dict[str, object]:
    """Every leaf command, by its path (`eval`, `config show`, ...)."""
    found: dict[str, object] = {}

    def walk(group: object, prefix: str) -> None:
        for name, command in group.commands.items():  # type: ignore[attr-defined]
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                found[prefix + name] = command

    walk(typer.main.get_command(app), "")
    return found


def _help(*argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUTQ_")}
    proc = subprocess.run([sys.executable, "-m", "rolloutq.controller", *argv, "--help"], capture_output=True,
                          text=True, timeout=120, env={**env, "COLUMNS": "200", "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_option_of_every_command_has_help_text():
    commands = _commands()
    assert {"eval", "config show", "controller", "policy-worker", "sim-worker", "health", "top", "exporter"} <= set(
        commands)
    silent = [f"{path} {p.opts[0]}" for path, c in commands.items() for p in c.params  # type: ignore[attr-defined]
              if p.param_type_name == "option" and not (getattr(p, "help", "") or "").strip()]
    assert not silent, f"options without help text: {silent}"


def test_each_command_help_shows_its_options_text():
    """As a user sees it: the worker's batching options are explained in its --help."""
    text = " ".join(_help("policy-worker").split())
    assert "--max-batch-size" in text and "Most rows (rollouts) in one forward pass" in text
    assert "--max-wait-ms" in text and "Milliseconds a batch's first request waits for others" in text


def test_eval_help_is_short_and_documents_exit_statuses():
    options = [p for p in _commands()["eval"].params if p.param_type_name == "option"]  # type: ignore[attr-defined]
    assert len(options) + 1 < 20, [p.opts[0] for p in options]  # and --help
    text = " ".join(_help("eval").split())
    for status in ("0 done", "1 the run failed", "130 interrupted", "2 a wrong flag", "3 more episodes",
                   "4 a setup error"):
        assert status in text, status
    assert "--overwrite" in text
