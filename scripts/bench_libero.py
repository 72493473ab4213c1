"""LIBERO env cost on this machine: build time, memory, env steps/s with the cameras rendered once
per policy query (`--query-every`), K envs in one process (no policy, no Redis).

    MUJOCO_GL=egl PYTHONPATH=. .venv-libero/bin/python scripts/bench_libero.py --envs 2 --steps 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rolloutq.sim_workers.tasks.libero.adapter import VectorAdapter


def rss_mib() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) // 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--envs", type=int, default=2)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--query-every", type=int, default=8)
    p.add_argument("--image-size", type=int, default=256)
    a = p.parse_args()
    t0 = time.perf_counter()
    venv = VectorAdapter(suite=a.suite, num_envs=a.envs, image_size=a.image_size, max_steps=a.steps + 1)
    for i in range(a.envs):
        t = time.perf_counter()
        venv.reset([i], [i])
        print(f"env {i}: build + reset + settle {time.perf_counter() - t:.1f} s, process RSS {rss_mib()} MiB")
    print(f"all envs ready after {time.perf_counter() - t0:.1f} s")
    ids = list(range(a.envs))
    actions = np.tile(np.array([0.2, 0.0, -0.2, 0, 0, 0, -1.0]), (a.envs, 1))
    render_s = 0.0
    t0 = time.perf_counter()
    for k in range(a.steps):
        if k % a.query_every == 0:
            t = time.perf_counter()
            venv.observe(ids)
            render_s += time.perf_counter() - t
        venv.step(actions)
    wall = time.perf_counter() - t0
    print(f"{a.envs} envs x {a.steps} steps, cameras ({a.image_size}px) every {a.query_every}: "
          f"{a.envs * a.steps / wall:.1f} env steps/s ({render_s / wall:.0%} of the time rendering); "
          f"process RSS {rss_mib()} MiB")
    venv.close()


if __name__ == "__main__":
    main()
