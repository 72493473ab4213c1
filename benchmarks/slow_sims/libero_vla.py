"""vla-eval's own LIBERO benchmark, timed at the simulator like every other side of this
comparison; runs in `.venv-libero` (LIBERO and vla-eval), started by `libero_compare`.

Rollout i is LIBERO task i mod T of the suite from its initial state i // T, T being the run's tasks
(N up to 10; 8 at N = 16): vla-eval's episode `episode_idx` of task `task_id` is rollout
task_id + T x episode_idx, and rolloutq's side runs seed i over tasks 0..T-1, which its interleaved
order maps to the same task and state. The clock of a round trip starts
when `make_obs` has built the observation (the cameras were rendered inside the previous `step`)
and stops when `step` receives the action; the rollout waits at the run's barrier after its
reset and settle steps. Images go PNG-encoded, vla-eval's default (`image_format`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vla_eval.benchmarks.base import StepResult
from vla_eval.benchmarks.libero.benchmark import LIBEROBenchmark
from vla_eval.protocol.numpy_codec import set_image_format

from benchmarks.slow_sims.env import Barrier, RolloutLog


class TimedLIBERO(LIBEROBenchmark):
    def __init__(self, steps: int, out_dir: str, image_format: str = "png", tasks: int = 10, **params: Any) -> None:
        super().__init__(max_steps=steps, **params)
        self.tasks = tasks  # a run's tasks: rollout = task + tasks x episode, as rolloutq's seed i
        set_image_format(image_format)
        self.out_dir = out_dir
        self.log: RolloutLog | None = None

    def reset(self, task: dict[str, Any]) -> Any:
        obs = super().reset(task)
        self.log = RolloutLog("vla-eval", int(task["task_id"]) + self.tasks * int(task.get("episode_idx", 0)), 0.0)
        Barrier(self.out_dir).arrive(self.log.rollout)
        return obs

    def make_obs(self, raw_obs: Any, task: dict[str, Any]) -> dict[str, Any]:
        obs = super().make_obs(raw_obs, task)
        assert self.log is not None
        self.log.observed()
        return obs

    def step(self, action: dict[str, Any]) -> StepResult:
        assert self.log is not None
        self.log.applied(action.get("batch_size"))
        result = super().step(action)
        self.log.stepped()
        return result

    def get_step_result(self, step_result: StepResult) -> dict[str, Any]:
        assert self.log is not None
        self.log.write(Path(self.out_dir))
        return super().get_step_result(step_result)
