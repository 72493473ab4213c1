"""Running one (system, N) measurement: the simulator processes, the start barrier, their logs, and
the CPU the run cost; and vla-eval's model server as a process of its own venv.

Every process's output goes to a log file in the run's folder, named in the error when it fails.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.slow_sims.env import Barrier, read_logs
from benchmarks.slow_sims.report import summarise

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class RunFailed(RuntimeError):
    """A measurement whose processes did not all finish their rollouts."""


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a process started here: the repository on its import path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def spawn(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(list(cmd), stdout=f, stderr=subprocess.STDOUT, env=env or child_env(), cwd=ROOT,
                                start_new_session=True)


def cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of running processes (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text()[-chars:]
    except OSError:
        return ""


def measure(system: str, n: int, folder: Path, launch: Callable[[Path], list[subprocess.Popen]],
            server_pids: Sequence[int], ready_timeout_s: float, run_timeout_s: float) -> dict[str, Any]:
    """Starts the simulators (`launch`), releases them together once all N are ready, waits for
    them, and summarises their logs; raises `RunFailed` when a rollout is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    cpu0, server0 = _children_cpu_s(), cpu_s(server_pids)
    procs = launch(folder)
    barrier = Barrier(folder)
    deadline = time.monotonic() + ready_timeout_s
    next_note = time.monotonic() + 30
    try:
        while barrier.ready() < n:
            if time.monotonic() > next_note:
                print(time.strftime("%H:%M:%S"), f"{system} N={n}: {barrier.ready()}/{n} rollouts ready", flush=True)
                next_note += 30
            dead = [p for p in procs if p.poll() is not None and p.returncode != 0]
            if dead or time.monotonic() > deadline:
                why = f"exited with {dead[0].returncode}" if dead else f"not ready after {ready_timeout_s:.0f} s"
                raise RunFailed(f"{system} N={n}: {barrier.ready()}/{n} rollouts ready, a simulator {why}; "
                                f"see {folder}/*.log:\n{_tail(next(folder.glob('*.log')))}")
            time.sleep(0.05)
        t0 = time.time()
        barrier.release()
        for p in procs:
            p.wait(timeout=max(1.0, t0 + run_timeout_s - time.time()))
    except (RunFailed, subprocess.TimeoutExpired, KeyboardInterrupt):
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        raise
    load = os.getloadavg()
    logs = read_logs(folder)
    failed = [p.args for p in procs if p.returncode != 0]
    if failed or len(logs) < n:
        logs_text = "\n".join(_tail(f, 800) for f in sorted(folder.glob("*.log"))[:2])
        raise RunFailed(f"{system} N={n}: {len(logs)}/{n} rollouts finished, {len(failed)} processes failed; "
                        f"see {folder}:\n{logs_text}")
    row = {"system": system, **summarise(logs, n),
           "cpu_s_simulators": round(_children_cpu_s() - cpu0, 2),
           "cpu_s_server": round(cpu_s(server_pids) - server0, 2),
           "loadavg_1m_after": round(load[0], 2)}
    return row


class VlaServer:
    """vla-eval's batching model server (`vla_side.CostModelServer`) in a process of its own venv."""

    def __init__(self, python: str, port: int, max_batch_size: int, max_wait_ms: float, batch_ms: float,
                 item_ms: float, log: Path) -> None:
        self.cmd = [python, "-m", "benchmarks.slow_sims.vla_side", "--port", str(port),
                    "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
                    "--batch-ms", str(batch_ms), "--item-ms", str(item_ms)]
        self.port, self.log = port, log
        self.url = f"ws://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> VlaServer:
        self.proc = spawn(self.cmd, self.log)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/config", timeout=2) as r:
                    self.config = json.loads(r.read())["config"]
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RunFailed(f"vla-eval's model server did not come up:\n{_tail(self.log)}") from None
                time.sleep(0.2)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def vla_eval_shards(vla_eval: str, n: int, benchmark: str, params: dict[str, Any], steps: int, server_url: str,
                    folder: Path, render: str, extra_env: dict[str, str], tasks: int | None = None
                    ) -> list[subprocess.Popen]:
    """N `vla-eval run` shard processes (its way of running N episodes at once), one episode each: the
    first `tasks` tasks (default N) with N / `tasks` episodes each."""
    tasks = tasks or n
    if n % tasks:
        raise ValueError(f"{n} rollouts do not split into {tasks} tasks with as many episodes each")
    config = {
        "server": {"url": server_url, "timeout": 300},
        "render": render,
        "output_dir": str(folder / "vla-eval-results"),
        "benchmarks": [{"benchmark": benchmark, "params": params, "episodes_per_task": n // tasks,
                        "max_steps": steps, "max_tasks": tasks}],
    }
    path = folder / "vla-eval-config.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    env = child_env(**extra_env)
    return [spawn([vla_eval, "run", "--config", str(path), "--no-docker", "--no-save", "--shard-id", str(i),
                   "--num-shards", str(n)], folder / f"shard-{i:03d}.log", env) for i in range(n)]


def python_of(venv: Path) -> str:
    return str(venv / "bin" / "python")
