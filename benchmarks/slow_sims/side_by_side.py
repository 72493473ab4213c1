"""One side-by-side run: both systems' servers started once, then at each N both systems measured
one after the other (which goes first alternates with N), then one record and one table.

What differs between the synthetic env and LIBERO is a `Workload`: which simulator processes each
system starts and with what. The policy cost model and the batching knobs are the same for both.
"""

from __future__ import annotations

import hashlib
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rolloutq.broker.embedded import free_port

from benchmarks.harness.record import make_record, write_record
from benchmarks.slow_sims.policy import BATCH_MS, ITEM_MS
from benchmarks.slow_sims.report import table
from benchmarks.slow_sims.rolloutq_side import knobs, start_worker
from benchmarks.slow_sims.runs import ROOT, RunFailed, VlaServer, child_env, measure, spawn, vla_eval_shards

RESULTS = ROOT / "benchmarks" / "results"


def log(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


@dataclass
class Workload:
    name: str  # the record's scenario name
    steps: int
    rolloutq_sim: list[str]  # command of a rolloutq simulator process, before --redis-url ...
    rolloutq_groups: Callable[[int], list[list[int]]]  # rollout indices per simulator process
    vla_python: str  # the venv that serves vla-eval's model server
    vla_eval: str  # the `vla-eval` executable that runs the shards
    vla_benchmark: str
    vla_params: Callable[[int, Path], dict[str, Any]]
    render: str = "cpu"  # vla-eval's `render:` (cpu: its OSMesa; gpu: it leaves the renderer to `env`)
    env: dict[str, str] = field(default_factory=dict)  # both systems' simulator processes
    ready_timeout_s: Callable[[int], float] = lambda n: 120 + 10 * n
    run_timeout_s: float = 600
    describe: dict[str, Any] = field(default_factory=dict)
    fits: Callable[[int], str | None] = lambda n: None  # why N cannot run now (memory), or None
    tasks: Callable[[int], int] = lambda n: n  # vla-eval tasks of a run of N rollouts (N / tasks episodes each)
    rolloutq_sim_args: Callable[[int], list[str]] = lambda n: []  # more arguments of its simulators at N


@dataclass(frozen=True)
class Cost:
    """The policy's cost model and the batching knobs, the same on both sides."""

    batch_ms: float = BATCH_MS
    item_ms: float = ITEM_MS
    max_batch_size: int = 16
    max_wait_ms: float = 5.0  # vla-eval's max_wait_time; rolloutq's BatchSettings.max_wait_ms


def add_cost_args(p: Any) -> None:
    p.add_argument("--batch-ms", type=float, default=BATCH_MS, help="policy cost per batch (both systems)")
    p.add_argument("--item-ms", type=float, default=ITEM_MS, help="policy cost per item of a batch (both systems)")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="vla-eval's max_wait_time; rolloutq's max_wait_ms")


def cost_of(a: Any) -> Cost:
    return Cost(a.batch_ms, a.item_ms, a.max_batch_size, a.max_wait_ms)


def worker_pids(worker: Any) -> list[int]:
    """The policy worker's process and its redis-server (the harness keeps both private)."""
    procs = [getattr(worker, "_process", None), getattr(worker.redis, "_proc", None)]
    return [p.pid for p in procs if p is not None]


class Systems:
    def __init__(self, w: Workload, cost: Cost, redis_server: str | None, work: Path) -> None:
        self.w, self.cost = w, cost
        self.redis_server, self.work = redis_server, work
        self.worker: Any = None
        self.vla: VlaServer | None = None
        self.run_no = 0

    def start(self, systems: list[str]) -> dict[str, Any]:
        c = self.cost
        cost = f"sleep {c.batch_ms:g} ms + {c.item_ms:g} ms x B"
        out: dict[str, Any] = {}
        if "rolloutq" in systems:
            self.worker = start_worker(c.max_batch_size, c.max_wait_ms, self.redis_server,
                                       {"batch_ms": c.batch_ms, "item_ms": c.item_ms})
            out["rolloutq"] = {**knobs(c.max_batch_size, c.max_wait_ms),
                               "policy": f"policy-worker process, on its inference thread: {cost}",
                               "simulators": "rolloutq_side: EnvSlot + sim_workers.runner.run_episode, "
                                             "one PolicyClient per process"}
        if "vla-eval" in systems:
            if not Path(self.w.vla_python).exists() or not Path(self.w.vla_eval).exists():
                raise RunFailed(f"no {self.w.vla_eval}: run `bash scripts/install_vla_eval.sh` first")
            self.vla = VlaServer(self.w.vla_python, free_port(), c.max_batch_size, c.max_wait_ms, c.batch_ms,
                                 c.item_ms, self.work / "vla-eval-server.log").start()
            out["vla-eval"] = {"server": "vla_eval.model_servers.predict.PredictModelServer, batched dispatch",
                               **self.vla.config, "policy": f"predict_batch on the server's thread: {cost}",
                               "simulators": f"one `vla-eval run --no-docker --no-save` shard per rollout, "
                                             f"SyncEpisodeRunner, render: {self.w.render}"}
        return out

    def measure(self, system: str, n: int) -> dict[str, Any]:
        self.run_no += 1
        folder = self.work / f"{self.run_no:02d}-{system}-n{n}"
        w = self.w
        env = child_env(**w.env)
        if system == "rolloutq":
            run = f"s{int(time.time())}n{n}"

            def launch(folder: Path) -> list:
                return [spawn([*w.rolloutq_sim, *w.rolloutq_sim_args(n), "--redis-url", self.worker.url, "--run", run,
                               "--rollouts", ",".join(map(str, g)), "--out", str(folder)],
                              folder / f"sim-{k}.log", env) for k, g in enumerate(w.rolloutq_groups(n))]

            pids = worker_pids(self.worker)
        else:
            assert self.vla is not None
            url = self.vla.url

            def launch(folder: Path) -> list:
                return vla_eval_shards(w.vla_eval, n, w.vla_benchmark, w.vla_params(n, folder), w.steps, url,
                                       folder, w.render, w.env, tasks=w.tasks(n))

            pids = [self.vla.pid]
        return measure(system, n, folder, launch, pids, w.ready_timeout_s(n), w.run_timeout_s)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.vla is not None:
            self.vla.stop()


def run(w: Workload, ns: list[int], systems: list[str], cost: Cost, redis_server: str | None, out: str | None,
        argv: list[str]) -> int:
    import rolloutq.broker.batcher as batcher

    work = Path(tempfile.mkdtemp(prefix=f"{w.name}-"))
    runner = Systems(w, cost, redis_server, work)
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {
        "workload": w.describe,
        "policy_cost": asdict(cost),
        "rolloutq_batcher": {"file": batcher.__file__,
                             "sha1": hashlib.sha1(Path(batcher.__file__).read_bytes()).hexdigest()},
        "rows": rows,
    }
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `timeout` stops it like Ctrl-C: the rows measured are recorded
    try:
        results["systems"] = runner.start(systems)
        log("servers up; work folder", work)
        for k, n in enumerate(ns):
            why = w.fits(n)
            if why:
                rows += [{"system": s, "n": n, "error": f"not run: {why}"} for s in systems]
                log(f"N={n} not run: {why}")
                continue
            for system in systems if k % 2 == 0 else systems[::-1]:
                try:
                    row = runner.measure(system, n)
                except RunFailed as e:
                    row = {"system": system, "n": n, "error": str(e)[:3000]}
                    log(f"{system} N={n} failed: {e}")
                rows.append(row)
                if "error" not in row:
                    log(f"{system:9s} N={n:2d} {row['env_steps_per_s']:8.2f} env steps/s  p50 {row['rt_p50_ms']:7.1f} "
                        f"p90 {row['rt_p90_ms']:7.1f} ms  batch {row['mean_batch']}  load {row['loadavg_1m_after']}")
    except KeyboardInterrupt:
        results["interrupted"] = True
        log("interrupted; recording the rows measured so far")
    finally:
        runner.stop()
    command = " ".join([f"python -m {argv[0]}", *argv[1:]])
    target = Path(out) if out else RESULTS / f"{w.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path = write_record(make_record(w.name, command, results, work_dir=str(work)), target)
    log("wrote", path)
    print(table(rows))
    return 0 if rows and not results.get("interrupted") and all("error" not in r for r in rows) else 1
