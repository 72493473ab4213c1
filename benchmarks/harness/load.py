"""The load generator: N closed-loop rollouts of a synthetic GR00T-sized simulator.

Each rollout observes (REAL_G1: two 256x256 frames, 7 state groups, the instruction), asks its
policy for a chunk, executes `horizon` of its steps at `step_ms` each (a sleep: the simulator's
cost without CPU burn), then asks again. A vectorized simulator (`rows` > 1) steps that many envs
in lockstep and asks for all of them in one request, as Isaac Lab or a gymnasium vector env does
with `rows_per_request`. Simulators are threads spread over `procs` processes.

Two transports: `reference` posts a pickled nested observation over HTTP (the reference design,
B); `rolloutq` uses the product's `SyncPolicyClient` (C).
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rolloutq.policy_workers.backends._gr00t_layout import REAL_G1

TASK = "pick up the apple and place it on the plate"
POLICY = "bench-policy"


def flat_obs(seed: int, task: str = TASK) -> dict[str, Any]:
    """One REAL_G1 observation in the flat wire layout (leading dimension 1)."""
    rng = np.random.default_rng(seed)
    obs: dict[str, Any] = {
        "video.ego_view": rng.integers(0, 256, size=(1, *REAL_G1.video["ego_view"]), dtype=np.uint8),
        "annotation.human.task_description": [[task]],
    }
    for key, shape in REAL_G1.state.items():
        obs[f"state.{key}"] = rng.standard_normal((1, *shape)).astype(np.float32)
    return obs


def nested_obs(seed: int, task: str = TASK) -> dict[str, Any]:
    """The same observation nested by modality, as the reference design's clients send it."""
    flat = flat_obs(seed, task)
    return {
        "video": {"ego_view": flat["video.ego_view"]},
        "state": {k[6:]: v for k, v in flat.items() if k.startswith("state.")},
        "language": {"annotation.human.task_description": [[task]]},
    }


@dataclass(frozen=True)
class LoadSpec:
    target: str  # "reference" (HTTP, pickled) or "rolloutq" (SyncPolicyClient)
    url: str  # the reference's /act endpoint, or the Redis URL
    n: int  # rollouts
    procs: int = 8
    step_ms: float = 2.0
    horizon: int = 8
    rows: int = 1  # rollouts per simulator, asked for in one request
    shared_frames: bool = False  # rolloutq: frames through shared memory, a reference through Redis
    reply_steps: int = 0  # rolloutq: ask for only this many steps of each chunk (0: all)
    paced: bool = True  # a chunk's steps end on a grid of step_ms from the reply: no oversleep adds up
    duration_s: float = 20.0
    start_at: float = 0.0  # wall clock at which the rollouts start
    run_id: str = "run"  # rollout ids are unique per run: a reused id would meet an old run's replies


@dataclass(frozen=True)
class Call:
    """One policy query as its simulator saw it."""

    answered: float  # wall clock
    round_trip_ms: float
    batch: int  # the batch size the reply says it was served in
    sim: int
    rows: int
    error: str | None = None


@dataclass(frozen=True)
class StepBatch:
    done: float  # wall clock
    steps: int  # env steps taken since the reply (horizon x rows)


class SyntheticSim:
    """`rows` REAL_G1 envs stepped in lockstep; one `step_ms` pause covers all of them."""

    def __init__(self, seed: int, rows: int, step_ms: float, nested: bool) -> None:
        if nested:
            self.obs = nested_obs(seed)
            self._states = self.obs["state"]
            self._moving = "left_arm"
        else:
            if rows == 1:
                self.obs = flat_obs(seed)
            else:
                from rolloutq.sim_workers.rows import stack_rows

                self.obs = stack_rows([flat_obs(seed * 1000 + j) for j in range(rows)])
            self._states = self.obs
            self._moving = "state.left_arm"
        self.step_s = step_ms / 1000

    def observe(self) -> dict[str, Any]:
        # fresh state values each query; the frames stay (what sending them costs is what matters)
        self._states[self._moving] = self._states[self._moving] + np.float32(0.001)
        return self.obs

    def step(self, chunk: dict[str, Any], i: int, until: float | None) -> None:
        # each env's command for step i (not the note)
        _ = [a[:, i] for a in chunk.values() if isinstance(a, np.ndarray)]
        time.sleep(self.step_s if until is None else max(0.0, until - time.perf_counter()))


def _reference_act(spec: LoadSpec) -> Any:
    import requests

    session = requests.Session()

    def act(obs: Any) -> tuple[dict[str, Any], float, int]:
        t = time.perf_counter()
        r = session.post(spec.url, data=pickle.dumps(obs), timeout=600,
                         headers={"content-type": "application/octet-stream"})
        r.raise_for_status()
        return pickle.loads(r.content), (time.perf_counter() - t) * 1e3, 1

    return act


def _rolloutq_act(spec: LoadSpec, sim: int) -> Any:
    import redis
    from rolloutq.broker.client import SyncPolicyClient
    from rolloutq.broker.settings import ClientSettings

    settings = ClientSettings(reply_timeout_s=300, deadline_s=600, shared_frames=spec.shared_frames)
    client = SyncPolicyClient(redis.Redis.from_url(spec.url), POLICY, settings=settings)
    rollout = f"{spec.run_id}-n{spec.n}-s{sim}"

    def act(obs: Any) -> tuple[dict[str, Any], float, int]:
        res = client.act(rollout, obs, steps=spec.reply_steps)
        return res.chunk, res.round_trip_ms, res.batch

    return act


def _simulate(spec: LoadSpec, sim_id: int, calls: list[Call], steps: list[StepBatch], stop_at: float) -> None:
    sim = SyntheticSim(sim_id, spec.rows, spec.step_ms, nested=spec.target == "reference")
    act = _reference_act(spec) if spec.target == "reference" else _rolloutq_act(spec, sim_id)
    while time.time() < spec.start_at:
        time.sleep(0.005)
    while time.time() < stop_at:
        try:
            chunk, rt, batch = act(sim.observe())
        except Exception as e:  # a failed call is data too
            calls.append(Call(time.time(), 0.0, 0, sim_id, spec.rows, f"{type(e).__name__}: {e}"[:200]))
            time.sleep(0.5)
            continue
        calls.append(Call(time.time(), rt, batch, sim_id, spec.rows))
        t_reply = time.perf_counter()
        for i in range(spec.horizon):
            sim.step(chunk, i, t_reply + (i + 1) * spec.step_ms / 1000 if spec.paced else None)
        steps.append(StepBatch(time.time(), spec.horizon * spec.rows))


def _process(spec: LoadSpec, sims: list[int], queue: Any) -> None:
    calls: list[Call] = []
    steps: list[StepBatch] = []
    stop_at = spec.start_at + spec.duration_s
    threads = [threading.Thread(target=_simulate, args=(spec, s, calls, steps, stop_at), daemon=True) for s in sims]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=spec.duration_s + 900)
    queue.put((calls, steps))


def run_load(spec: LoadSpec) -> tuple[list[Call], list[StepBatch]]:
    """Runs the rollouts until `start_at + duration_s`; returns every call and step batch."""
    if spec.n % spec.rows:
        raise ValueError(f"{spec.n} rollouts do not split into simulators of {spec.rows} envs")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    sims = spec.n // spec.rows
    procs = max(1, min(spec.procs, sims))
    workers = [ctx.Process(target=_process, args=(spec, list(range(sims))[p::procs], queue), daemon=True)
               for p in range(procs)]
    for w in workers:
        w.start()
    calls: list[Call] = []
    steps: list[StepBatch] = []
    for _ in workers:
        c, s = queue.get(timeout=spec.duration_s + 1200)
        calls += c
        steps += s
    for w in workers:
        w.join(timeout=30)
    return calls, steps
