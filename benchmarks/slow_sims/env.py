"""The synthetic simulator both systems drive, and what it records: numpy only, so the same code
runs in rolloutq's venv and in vla-eval's.

Step costs are heterogeneous, as real simulators with cameras are: rollout `i` gets the base cost
`BASE_COSTS_MS[i % 4]` (300, 80, 20, 2 ms: N = 1 is one LIBERO-like slow simulator, N = 2 two slow
ones of different speeds, every N >= 4 an equal mix of the four), and each of its steps costs that base times a factor
drawn uniformly from [0.75, 1.25] by a generator seeded with (seed, i), clipped to [2, 300] ms. A
step is a sleep: a simulator on cores of its own, not CPU work on this machine's two cores. Each
observation is a 256x256x3 uint8 frame (fixed per rollout: what sending it costs is what matters)
and an 8-D float32 state that changes every step.

The round trip is measured here, at the simulator, identically on both sides: from the moment an
observation has been made (`observe` returns) to the moment its action is applied (`step` is
entered). Each rollout writes one JSON file when it ends (`RolloutLog`); `Barrier` starts all
rollouts of a run together once every one of them is ready.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BASE_COSTS_MS = (300.0, 80.0, 20.0, 2.0)
JITTER = (0.75, 1.25)
COST_RANGE_MS = (2.0, 300.0)
FRAME_SHAPE = (256, 256, 3)
STATE_DIM = 8
ACTION_DIM = 7
INSTRUCTION = "pick up the apple and place it on the plate"


def step_costs_ms(rollout: int, steps: int, seed: int) -> np.ndarray:
    """The `steps` step costs (ms) of rollout `rollout`; the same on any machine for a seed."""
    rng = np.random.default_rng([seed, rollout])
    base = BASE_COSTS_MS[rollout % len(BASE_COSTS_MS)]
    return np.clip(base * rng.uniform(*JITTER, size=steps), *COST_RANGE_MS)


@dataclass
class RolloutLog:
    """One rollout as its simulator saw it (wall-clock seconds, milliseconds for round trips)."""

    system: str
    rollout: int
    base_ms: float
    steps: int = 0
    first_obs: float = 0.0
    last_step: float = 0.0
    rt_ms: list[float] = field(default_factory=list)
    batch: list[int] = field(default_factory=list)
    """The batch size each reply says it was served in."""
    _observed_at: float = field(default=0.0, repr=False)

    def observed(self) -> None:
        """An observation has been made: the round trip's clock starts."""
        self._observed_at = time.perf_counter()
        if not self.first_obs:
            self.first_obs = time.time()

    def applied(self, batch: int | None = None) -> None:
        """Its action is being applied: the round trip ends."""
        self.rt_ms.append((time.perf_counter() - self._observed_at) * 1e3)
        if batch is not None:
            self.batch.append(int(batch))

    def stepped(self) -> None:
        self.steps += 1
        self.last_step = time.time()

    def write(self, folder: str | Path) -> None:
        path = Path(folder) / f"rollout-{self.rollout:03d}.json"
        path.write_text(json.dumps({k: v for k, v in asdict(self).items() if not k.startswith("_")}))


def read_logs(folder: str | Path) -> list[RolloutLog]:
    return [RolloutLog(**json.loads(p.read_text())) for p in sorted(Path(folder).glob("rollout-*.json"))]


class Barrier:
    """All rollouts of a run start together: each says it is ready, then waits for the driver's
    start time (`go`), so process start-up (16 processes on 2 cores) never staggers the rollouts."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def arrive(self, rollout: int, timeout_s: float = 600.0) -> float:
        (self.folder / f"ready-{rollout:03d}").touch()
        go = self.folder / "go"
        deadline = time.monotonic() + timeout_s
        while not go.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout {rollout}: no start signal within {timeout_s:.0f} s")
            time.sleep(0.01)
        start_at = float(go.read_text())
        time.sleep(max(0.0, start_at - time.time()))
        return start_at

    def ready(self) -> int:
        return len(list(self.folder.glob("ready-*")))

    def release(self, delay_s: float = 0.3) -> float:
        start_at = time.time() + delay_s
        tmp = self.folder / "go.tmp"
        tmp.write_text(repr(start_at))
        tmp.replace(self.folder / "go")
        return start_at


class SlowSim:
    """One synthetic environment: `observe` makes the observation, `step` applies an action and
    sleeps the step's cost; done after `steps` steps."""

    def __init__(self, system: str, rollout: int, steps: int, seed: int, out_dir: str | Path) -> None:
        self.costs_s = step_costs_ms(rollout, steps, seed) / 1000.0
        self.log = RolloutLog(system, rollout, BASE_COSTS_MS[rollout % len(BASE_COSTS_MS)])
        self.out_dir = Path(out_dir)
        rng = np.random.default_rng([seed, rollout, 1])
        self.frame = rng.integers(0, 256, size=FRAME_SHAPE, dtype=np.uint8)
        self.state = rng.standard_normal(STATE_DIM).astype(np.float32)

    def start(self) -> None:
        Barrier(self.out_dir).arrive(self.log.rollout)

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame, state); starts the round trip's clock."""
        self.state = self.state + np.float32(0.001)
        self.log.observed()
        return self.frame, self.state

    def step(self, action: Any, batch: int | None = None) -> bool:
        """Applies `action` (ends the round trip) and sleeps the step's cost; True when done.
        `batch`: the batch size the reply names, where the simulator sees the reply."""
        self.log.applied(batch)
        if np.asarray(action).size != ACTION_DIM:
            raise ValueError(f"expected a {ACTION_DIM}-D action, got shape {np.shape(action)}")
        time.sleep(self.costs_s[self.log.steps])
        self.log.stepped()
        return self.done

    @property
    def done(self) -> bool:
        return self.log.steps >= len(self.costs_s)

    def finish(self) -> None:
        self.log.write(self.out_dir)
