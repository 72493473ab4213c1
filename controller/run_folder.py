"""The run's folder (`--out`) as the CLI manages it: refuse to mix two runs in one folder, and leave
the run's Redis URL there so that `rolloutq top --run-dir` and `rolloutq health --run-dir` find the
Redis an eval started for itself.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rolloutq.controller.errors import ControllerError

REDIS_URL_FILE = "redis.url"
RUN_FILES = ("summary.json", "episodes.jsonl", "config.toml", "report.md", "success_per_seed.png",
             "round_trip_ms.png", "env_steps_per_s.png", REDIS_URL_FILE)
RUN_FOLDERS = ("videos",)
"""What a run writes to its folder: what `--overwrite` clears."""


class RunFolderError(ControllerError):
    """A results folder that cannot be used as it is."""


def prepare_out(out: Path, overwrite: bool) -> None:
    """Make `out` ready for a new run: create it, refuse it when it holds anything, or with `overwrite`
    clear what an earlier run wrote there (other files stay)."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file; name a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunFolderError(f"--out {out} is not empty; name a new folder, or add --overwrite to replace the "
                                 "results of the run written there")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for name in RUN_FOLDERS:
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def write_redis_url(out: Path, url: str) -> Path:
    """OUT/redis.url, readable by this user only: it may hold the password of the run's Redis."""
    path = out / REDIS_URL_FILE
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(url + "\n")
    return path


def read_redis_url(run_dir: Path) -> str:
    """The Redis URL a run wrote to its folder."""
    path = run_dir / REDIS_URL_FILE
    try:
        url = path.read_text().strip()
    except FileNotFoundError:
        raise RunFolderError(f"{run_dir} holds no {REDIS_URL_FILE}: is it the --out folder of a `rolloutq eval` "
                             "that has started?") from None
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {e.strerror or e}") from None
    if not url:
        raise RunFolderError(f"{path} is empty")
    return url
