"""Env steps/s of the g1-pickplace task on this machine.

    PYTHONPATH=. python scripts/bench_g1.py --steps 400 --renders 40

Measures: physics-only env steps (hold the rest pose), `observe()` calls with 256x256 rendering,
and closed-loop expert episodes (8 env steps per observe) with and without rendering.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from rolloutq.policy_workers.backends import make_backend
from rolloutq.sim_workers.tasks import make_task


def closed_loop(env, expert, seeds) -> float:
    steps, t0 = 0, time.perf_counter()
    for seed in seeds:
        env.reset(seed)
        done = False
        while not done:
            chunk = expert.infer([env.observe()])[0]
            for t in range(8):
                r = env.step(env.action_from_chunk(chunk, t))
                steps += 1
                if r.done:
                    done = True
                    break
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--renders", type=int, default=40)
    ap.add_argument("--episodes", type=int, default=5)
    args = ap.parse_args()
    env = make_task("g1-pickplace", privileged=True)
    env.reset(0)
    hold = np.zeros((1, 28), np.float32)
    hold[0, :14] = np.concatenate([env.data.qpos[env.arm_qpos["left"]], env.data.qpos[env.arm_qpos["right"]]])
    t0 = time.perf_counter()
    for _ in range(args.steps):
        env.step(hold)
    physics = args.steps / (time.perf_counter() - t0)
    env.observe()
    t0 = time.perf_counter()
    for _ in range(args.renders):
        env.observe()
    renders = args.renders / (time.perf_counter() - t0)
    expert = make_backend("g1-expert")
    expert.load()
    seeds = list(range(args.episodes))
    with_render = closed_loop(env, expert, seeds)
    env_nr = make_task("g1-pickplace", privileged=True, render=False)
    without_render = closed_loop(env_nr, expert, seeds)
    print(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}  substeps/env step={env.n_substeps}")
    print(f"physics only: {physics:.0f} env steps/s ({physics * env.n_substeps:.0f} physics steps/s)")
    print(f"observe() with 256x256 render: {renders:.1f} /s")
    print(f"closed loop, expert, observe every 8 steps: {with_render:.0f} env steps/s with rendering, "
          f"{without_render:.0f} without")


if __name__ == "__main__":
    main()
