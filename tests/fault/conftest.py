"""Fixtures of the fault-injection tests: a restartable redis-server with AOF, and real processes.

Every process a test starts is a child in its own session; whatever is still alive when the test
ends is SIGKILLed by its pid (never by name). Each test carries a pytest-timeout watchdog.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rolloutq.broker.embedded import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[2]
REDIS7 = "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
"""Debian's redis-server 7 (TLS, ACL files); else whatever `rolloutq.broker.embedded` finds."""


def redis_binary() -> str | None:
    return REDIS7 or shutil.which("redis-server")


class Proc:
    """A child process of a test, with its log kept for the failure message."""

    def __init__(self, role: str, cfg: dict, log: Path) -> None:
        self.role, self.cfg, self.log_path = role, cfg, log
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        with open(log, "wb") as out:
            self.p = subprocess.Popen([sys.executable, "-m", "tests.fault.procs", role, json.dumps(cfg)],
                                      cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.p.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.p.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def spawn(tmp_path):
    procs: list[Proc] = []

    def start(role: str, **cfg) -> Proc:
        proc = Proc(role, cfg, tmp_path / f"{role}-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.alive():
            proc.signal(signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def aof_redis(tmp_path):
    """redis-server with `appendonly yes` (everysec) in a data dir that survives kill -9 + restart."""
    data = tmp_path / "redis"
    data.mkdir()
    server = EmbeddedRedis(binary=redis_binary(), port=free_port(), dir=str(data), appendonly=True,
                           appendfsync="everysec").start()
    try:
        yield server
    finally:
        server.stop()


def wait_for(pred, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_worker(url: str, worker_id: str, policy: str = "p", timeout: float = 30.0, proc: Proc | None = None) -> None:
    r = redis.Redis.from_url(url)

    def up() -> bool:
        if proc is not None and not proc.alive():
            raise AssertionError(f"worker {worker_id} exited early:\n{proc.log()[-3000:]}")
        return bool(r.hexists(f"rq:workers:{policy}", worker_id))

    try:
        wait_for(up, timeout, f"worker {worker_id}")
    finally:
        r.close()
