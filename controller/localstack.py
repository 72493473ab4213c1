"""A local exporter + Prometheus for `rolloutq eval --autoscale` without a monitoring stack, and
for the tests and benchmarks: the real `rolloutq exporter` (monitoring/) and the real
`prometheus` binary, as child processes on free ports, scraping every second.

The exporter runs as `python -m rolloutq.monitoring.cli exporter` from the tree that has
`monitoring/exporter.py`: this checkout, or `exporter_root` (ROLLOUTQ_EXPORTER_ROOT at the CLI edge)
while the monitoring package lives on another branch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rolloutq.broker.embedded import free_port
from rolloutq.controller.prom import wait_ready

_HERE = Path(__file__).resolve().parent.parent


def exporter_root(hint: str | None = None) -> Path | None:
    for root in ([Path(hint)] if hint else []) + [_HERE]:
        if (root / "monitoring" / "exporter.py").exists():
            return root
    return None


@dataclass
class LocalStack:
    redis_url: str
    namespace: str = "rq"
    extra_targets: list[str] = field(default_factory=list)
    """host:port of other /metrics endpoints to scrape (the controller's own, test gauges)."""
    scrape_interval_s: float = 1.0
    exporter_interval_s: float = 1.0
    exporter_root_hint: str | None = None
    prometheus_bin: str = "prometheus"
    exporter_port: int = 0
    prometheus_port: int = 0
    _procs: list[subprocess.Popen] = field(default_factory=list)
    _dir: str | None = None

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def start(self, with_exporter: bool = True) -> LocalStack:
        if shutil.which(self.prometheus_bin) is None:
            raise RuntimeError("no `prometheus` binary on PATH (Debian: apt-get install prometheus)")
        self._dir = tempfile.mkdtemp(prefix="rq-prom-")
        log = open(os.path.join(self._dir, "stack.log"), "ab")
        targets = list(self.extra_targets)
        if with_exporter:
            root = exporter_root(self.exporter_root_hint)
            if root is None:
                raise RuntimeError("monitoring/exporter.py not found: set ROLLOUTQ_EXPORTER_ROOT to a checkout "
                                   "that has it, or give --prometheus-url of a running stack")
            self.exporter_port = self.exporter_port or free_port()
            env = {**os.environ, "PYTHONPATH": str(root)}
            self._procs.append(subprocess.Popen(
                [sys.executable, "-m", "rolloutq.monitoring.cli", "exporter", "--redis-url", self.redis_url,
                 "--namespace", self.namespace, "--port", str(self.exporter_port), "--addr", "127.0.0.1",
                 "--interval", str(self.exporter_interval_s)],
                cwd=str(root), env=env, stdout=log, stderr=log, start_new_session=True))
            targets.append(f"127.0.0.1:{self.exporter_port}")
        self.prometheus_port = self.prometheus_port or free_port()
        cfg = Path(self._dir) / "prometheus.yml"
        lines = [
            "global:",
            f"  scrape_interval: {self.scrape_interval_s:g}s",
            f"  evaluation_interval: {self.scrape_interval_s:g}s",
            "scrape_configs:",
            "  - job_name: rolloutq-local",
            "    static_configs:",
            "      - targets: [" + ", ".join(f'"{t}"' for t in targets) + "]",
        ]
        cfg.write_text("\n".join(lines) + "\n")
        self._procs.append(subprocess.Popen(
            [self.prometheus_bin, f"--config.file={cfg}", f"--storage.tsdb.path={self._dir}/data",
             f"--web.listen-address=127.0.0.1:{self.prometheus_port}", "--web.enable-lifecycle"],
            stdout=log, stderr=log, start_new_session=True))
        if not wait_ready(self.prometheus_url, 30):
            self.stop()
            raise RuntimeError(f"prometheus did not become ready (log: {self._dir}/stack.log)")
        return self

    def stop(self) -> None:
        for p in reversed(self._procs):
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in self._procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self._procs.clear()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def pause_prometheus(self) -> None:
        """SIGSTOP Prometheus (tests: the controller must hold while it does not answer)."""
        self._procs[-1].send_signal(signal.SIGSTOP)

    def resume_prometheus(self) -> None:
        self._procs[-1].send_signal(signal.SIGCONT)

    def wait_for(self, expr: str, timeout_s: float = 30.0) -> bool:
        """Until `expr` returns a sample (e.g. the exporter's first scrape is in)."""
        from rolloutq.controller.prom import PromClient, PromUnavailable

        c = PromClient(self.prometheus_url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(PromUnavailable):
                if c.query(expr):
                    return True
            time.sleep(0.3)
        return False
