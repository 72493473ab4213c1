"""Closed-loop driver without Redis: reset -> observe -> infer([obs]) -> execute 8 of 40 -> repeat.

    PYTHONPATH=. python scripts/g1_drive.py --policy g1-expert --seeds 0-49
    PYTHONPATH=. python scripts/g1_drive.py --policy visuomotor --seeds 0-49 \
        --option checkpoint=policy_workers/checkpoints/g1_bc
    PYTHONPATH=. python scripts/g1_drive.py --policy random --seeds 0-9

`random` is a built-in uniform random joint-target policy (a baseline, not a backend).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from rolloutq.policy_workers.backends import make_backend
from rolloutq.sim_workers import real_g1
from rolloutq.sim_workers.tasks import make_task


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


class RandomPolicy:
    def __init__(self, low: np.ndarray, high: np.ndarray, seed: int = 0) -> None:
        self.low, self.high, self.rng = low, high, np.random.default_rng(seed)

    def infer(self, batch):
        out = []
        for _ in batch:
            chunk = real_g1.empty_chunk()
            arms = self.rng.uniform(self.low, self.high, size=(real_g1.CHUNK_LENGTH, 14))
            chunk["left_arm"][0], chunk["right_arm"][0] = arms[:, :7], arms[:, 7:]
            hands = self.rng.uniform(0, 1, size=(real_g1.CHUNK_LENGTH, 2, 1))
            chunk["left_hand"][0], chunk["right_hand"][0] = (
                np.repeat(hands[:, 0], 7, 1),
                np.repeat(hands[:, 1], 7, 1),
            )
            out.append(chunk)
        return out


def run_episode(env, policy, seed: int, horizon: int = real_g1.ACTION_HORIZON, on_obs=None) -> dict:
    env.reset(seed)
    steps, queries, t0 = 0, 0, time.perf_counter()
    result = None
    while True:
        obs = env.observe()
        chunk = policy.infer([obs])[0]
        queries += 1
        if on_obs is not None:
            on_obs(obs, chunk)
        for t in range(horizon):
            result = env.step(env.action_from_chunk(chunk, t))
            steps += 1
            if result.done:
                break
        if result.done:
            break
    return {
        "seed": seed,
        "success": result.success,
        "steps": steps,
        "queries": queries,
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="g1-expert")
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--option", action="append", default=[], help="backend option key=value")
    ap.add_argument("--no-render", action="store_true")
    args = ap.parse_args()
    # only the scripted expert sees the sim-only privileged key
    env = make_task("g1-pickplace", privileged=args.policy == "g1-expert", render=not args.no_render)
    if args.policy == "random":
        policy = RandomPolicy(env.ctrl_low[:14], env.ctrl_high[:14])
    else:
        policy = make_backend(args.policy, **dict(o.split("=", 1) for o in args.option))
        policy.load()
    results = []
    for seed in parse_seeds(args.seeds):
        r = run_episode(env, policy, seed)
        results.append(r)
        print(
            f"seed {seed:3d} success={r['success']!s:5} steps={r['steps']:3d} queries={r['queries']:2d} "
            f"{r['seconds']:.2f}s",
            flush=True,
        )
    k, n = sum(r["success"] for r in results), len(results)
    lo, hi = wilson(k, n)
    steps = sum(r["steps"] for r in results)
    secs = sum(r["seconds"] for r in results)
    print(f"success {k}/{n} = {k / n:.2f}  Wilson 95% [{lo:.2f}, {hi:.2f}]  env steps/s {steps / secs:.0f}")


if __name__ == "__main__":
    main()
