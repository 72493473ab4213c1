"""Behaviour cloning for g1-pickplace: expert demonstrations -> `policy_workers/checkpoints/g1_bc/`.

    PYTHONPATH=. python scripts/train_bc.py --episodes 400 --workers 2 --minutes 15 \
        --out policy_workers/checkpoints/g1_bc

1. Demonstrations: the scripted expert (`g1-expert`, privileged observations) drives the MuJoCo
   task on seeds 1000+ (disjoint from the evaluation seeds 0-49), re-planning every `--query-every`
   steps. In every other episode the executed arm targets get smooth random noise, so the data covers
   states off the expert's path; labels are always the expert's clean plan for the observed state
   (the expert is stateless, so any state can be labelled). Each sample stores the two frames
   pooled to 64x64, the state vector and the 40-step target. Runs in `--workers` processes, one
   torch/BLAS thread each.
2. Training: MSE on normalised targets (first 8 steps weighted x3), AdamW, cosine schedule, a
   wall-clock budget, random +-2 px image shifts as augmentation.
3. Writes model.safetensors + config.json (architecture, normalisation lives in the weights).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np


def _collect(args: tuple[list[int], int, int, str]) -> int:
    """Run expert episodes on `seeds`; save one .npz shard per episode into `shard_dir`."""
    seeds, query_every, size, shard_dir = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from rolloutq.policy_workers.backends import make_backend
    from rolloutq.policy_workers.backends.visuomotor import downsample, stack_state
    from rolloutq.sim_workers.tasks import make_task

    env = make_task("g1-pickplace", privileged=True)
    expert = make_backend("g1-expert")
    expert.load()
    done_episodes = 0
    for seed in seeds:
        shard = Path(shard_dir) / f"seed{seed:05d}.npz"
        if shard.exists():
            continue
        images, states, targets = [], [], []
        env.reset(seed)
        rng = np.random.default_rng(10_000 + seed)
        noisy = seed % 2 == 1
        noise = np.zeros(14)
        done = False
        result = None
        steps = 0
        while not done and steps < (200 if noisy else 10**9):
            obs = env.observe()
            chunk = expert.infer([obs])[0]
            frames = torch.from_numpy(np.asarray(obs["video.ego_view"]))
            images.append(downsample(frames, size)[0].numpy().astype(np.uint8))
            state = stack_state([obs])[0]
            states.append(state)
            tgt = np.concatenate(
                [
                    chunk["left_arm"][0] - state[0:7],
                    chunk["right_arm"][0] - state[7:14],
                    chunk["left_hand"][0].mean(1, keepdims=True),
                    chunk["right_hand"][0].mean(1, keepdims=True),
                ],
                axis=1,
            )
            targets.append(tgt.astype(np.float32))
            for t in range(query_every):
                action = env.action_from_chunk(chunk, t).copy()
                if noisy:
                    noise = 0.85 * noise + 0.15 * rng.normal(0, 0.1, 14)
                    action[0, :14] += noise
                result = env.step(action)
                steps += 1
                if result.done:
                    done = True
                    break
        tmp = shard.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            images=np.stack(images),
            states=np.stack(states),
            targets=np.stack(targets),
            success=np.array([result.success]),
            noisy=np.array([noisy]),
        )
        tmp.rename(shard)
        done_episodes += 1
    env.close()
    return done_episodes


def collect(episodes: int, workers: int, query_every: int, size: int, shard_dir: Path) -> None:
    shard_dir.mkdir(parents=True, exist_ok=True)
    seeds = list(range(1000, 1000 + episodes))
    parts = [(seeds[i::workers], query_every, size, str(shard_dir)) for i in range(workers)]
    if workers == 1:
        _collect(parts[0])
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            pool.map(_collect, parts)


def load_shards(shard_dir: Path) -> dict[str, np.ndarray]:
    shards = [
        dict(np.load(p)) for p in sorted(shard_dir.glob("seed*.npz")) if not p.name.endswith(".tmp.npz")
    ]
    data = {k: np.concatenate([s[k] for s in shards]) for k in ("images", "states", "targets")}
    data["success"] = np.concatenate([s["success"] for s in shards])
    data["noisy"] = np.concatenate([s["noisy"] for s in shards])
    return data


def train(
    data: dict[str, np.ndarray],
    out: Path,
    minutes: float,
    threads: int,
    seed: int,
    init: Path | None = None,
    lr: float = 1e-3,
) -> dict:
    import torch
    from rolloutq.policy_workers.backends.visuomotor import VisuomotorNet, default_config
    from safetensors.torch import save_file

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = default_config()
    net = VisuomotorNet(config)
    images = torch.from_numpy(data["images"])  # (N, 6, S, S) uint8
    states = torch.from_numpy(data["states"])
    targets = torch.from_numpy(data["targets"])  # (N, T, 16)
    n = len(images)
    if init is not None:  # continue from a checkpoint (keeps its normalisation)
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(init / "model.safetensors")))
    else:
        net.state_mean.copy_(states.mean(0))
        net.state_std.copy_(states.std(0).clamp_min(1e-3))
        flat = targets.reshape(-1, targets.shape[-1])
        net.action_mean.copy_(flat.mean(0))
        net.action_std.copy_(flat.std(0).clamp_min(1e-3))
    norm_targets = (targets - net.action_mean) / net.action_std
    weights = torch.ones(targets.shape[1])
    weights[: config["action_horizon"]] = 3.0
    weights = (weights / weights.mean())[None, :, None]

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, n // 20)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    batch = 64
    budget = minutes * 60
    t0 = time.time()
    step, epoch = 0, 0
    # estimate total steps from the first epoch for the cosine schedule
    steps_per_epoch = max(1, len(train_idx) // batch)
    total_steps = None
    log = []
    while time.time() - t0 < budget:
        net.train()
        order = train_idx[torch.randperm(len(train_idx))]
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            img = images[idx].float()
            dx, dy = np.random.randint(-2, 3, 2)
            img = torch.roll(img, shifts=(int(dy), int(dx)), dims=(2, 3))
            pred = net(img, states[idx])
            loss = ((pred - norm_targets[idx]) ** 2 * weights).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if total_steps is not None:
                frac = min(1.0, step / total_steps)
                for g in opt.param_groups:
                    g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))
            if time.time() - t0 > budget:
                break
        epoch += 1
        if total_steps is None:
            per_epoch_s = time.time() - t0
            total_steps = int(budget / per_epoch_s * steps_per_epoch)
        net.eval()
        with torch.no_grad():
            val = ((net(images[val_idx].float(), states[val_idx]) - norm_targets[val_idx]) ** 2).mean().item()
        log.append(
            {
                "epoch": epoch,
                "step": step,
                "train_loss": loss.item(),
                "val_loss": val,
                "elapsed_s": round(time.time() - t0, 1),
            }
        )
        print(json.dumps(log[-1]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    config["trained"] = {
        "samples": n,
        "epochs": epoch,
        "steps": step,
        "train_seconds": round(time.time() - t0),
        "final_val_loss": log[-1]["val_loss"] if log else None,
    }
    if init is not None:
        prev = json.loads((init / "config.json").read_text()).get("trained", {})
        config["trained"]["continued_from"] = {"path": str(init), **prev}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--query-every", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--data", type=Path, default=Path("/tmp/g1_bc_demos"), help="folder of per-episode shards"
    )
    ap.add_argument("--skip-collect", action="store_true", help="train on the shards already in --data")
    ap.add_argument("--out", type=Path, default=Path("policy_workers/checkpoints/g1_bc"))
    ap.add_argument("--init", type=Path, default=None, help="continue training from this checkpoint")
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    t0 = time.time()
    if not args.skip_collect:
        collect(args.episodes, args.workers, args.query_every, 64, args.data)
    data = load_shards(args.data)
    clean = ~data["noisy"]
    print(
        f"{len(data['images'])} samples from {len(data['success'])} episodes ({time.time() - t0:.0f}s); "
        f"expert success: clean {data['success'][clean].mean():.3f} of {clean.sum()}, "
        f"noisy {data['success'][~clean].mean():.3f} of {(~clean).sum()}",
        flush=True,
    )
    config = train(data, args.out, args.minutes, args.threads, args.seed, args.init, args.lr)
    print(f"saved {args.out} ({config['trained']}); total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
