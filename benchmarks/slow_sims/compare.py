"""The synthetic side-by-side run: rolloutq and vla-eval at N = 1, 2, 4, 8, 16 rollouts of the
slow, uneven simulator (`env`), with the same policy cost (20 ms + 1 ms per item per batch, max
batch 16, max wait 5 ms).

    python -m benchmarks.slow_sims [--ns 1,2,4,8,16] [--steps 80]

rolloutq: a `policy-worker` process (`policy.CostModelPolicy`) behind its own redis-server, and one
simulator process hosting the N rollouts (`rolloutq_side`, as `rolloutq sim-worker --envs N`).
vla-eval: its batching model server (`vla_side.CostModelServer`) and N `vla-eval run` shard
processes, one episode each, from `.venv-vla-eval` (scripts/install_vla_eval.sh). Writes
benchmarks/results/slow-sims-DATE.json (revision, machine, date, settings, every row) and prints
the table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from benchmarks.slow_sims.env import BASE_COSTS_MS, COST_RANGE_MS, JITTER
from benchmarks.slow_sims.runs import ROOT, python_of
from benchmarks.slow_sims.side_by_side import Workload, add_cost_args, cost_of, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.slow_sims", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns", default="1,2,4,8,16", help="rollout counts, in order")
    p.add_argument("--steps", type=int, default=80, help="env steps per rollout")
    p.add_argument("--seed", type=int, default=0, help="seeds the step costs and the frames")
    p.add_argument("--systems", default="rolloutq,vla-eval")
    add_cost_args(p)
    p.add_argument("--sim-procs", type=int, default=1, help="rolloutq simulator processes the rollouts spread over")
    p.add_argument("--vla-image-format", default="png", choices=["png", "jpeg", "raw"],
                   help="how vla-eval's simulators send frames (png: its default)")
    p.add_argument("--vla-venv", default=str(ROOT / ".venv-vla-eval"))
    p.add_argument("--redis-server", default=shutil.which("redis-server"))
    p.add_argument("--out", default=None, help="a .json path (default benchmarks/results/slow-sims-DATE.json)")
    return p.parse_args(argv)


def workload(a: argparse.Namespace) -> Workload:
    venv = Path(a.vla_venv)
    return Workload(
        name="slow-sims",
        steps=a.steps,
        rolloutq_sim=[sys.executable, "-m", "benchmarks.slow_sims.rolloutq_side", "--steps", str(a.steps),
                      "--seed", str(a.seed)],
        rolloutq_groups=lambda n: [list(range(n))[p::a.sim_procs] for p in range(min(a.sim_procs, n))],
        vla_python=python_of(venv),
        vla_eval=str(venv / "bin" / "vla-eval"),
        vla_benchmark="benchmarks.slow_sims.vla_side:SlowSimBenchmark",
        vla_params=lambda n, folder: {"rollouts": n, "steps": a.steps, "seed": a.seed, "out_dir": str(folder),
                                      "image_format": a.vla_image_format},
        describe={"env": "benchmarks.slow_sims.env.SlowSim", "base_costs_ms": list(BASE_COSTS_MS),
                  "jitter": list(JITTER), "cost_range_ms": list(COST_RANGE_MS),
                  "observation": "256x256x3 uint8 frame + 8-D float32 state + instruction",
                  "steps_per_rollout": a.steps, "seed": a.seed, "policy_calls": "one per env step",
                  "rolloutq_sim_processes": a.sim_procs, "vla_eval_image_format": a.vla_image_format},
    )


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    return run(workload(a), [int(x) for x in a.ns.split(",")], [s for s in a.systems.split(",") if s],
               cost_of(a), a.redis_server, a.out,
               ["benchmarks.slow_sims", *(argv if argv is not None else sys.argv[1:])])
