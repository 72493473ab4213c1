"""vla-eval's side of the comparison; runs in `.venv-vla-eval` (or `.venv-libero`, which also has
vla-eval), never in rolloutq's venv.

- `CostModelServer`: vla-eval's batching model server (`PredictModelServer` with
  `max_batch_size` > 1: a batch goes at once when the server is idle, then it waits up to
  `max_wait_time` after each batch for a full one) whose `predict_batch` sleeps the same cost as
  rolloutq's worker (`policy.CostModelPolicy`) and answers a zero 7-D action per observation, with
  the batch size beside it so the simulator can record it.
- `SlowSimBenchmark`: the synthetic env (`env.SlowSim`) as a vla-eval `StepBenchmark`, one task
  per rollout; `vla-eval run --shard-id i --num-shards N` runs one of them per process. Camera
  frames go the way vla-eval sends them by default, PNG-encoded (`image_format`; "raw" sends the
  bytes as they are).

    python -m benchmarks.slow_sims.vla_side --port 8765 --max-batch-size 16 --max-wait-ms 5
"""

from __future__ import annotations

import argparse
import time
from typing import Any, ClassVar

import numpy as np
from vla_eval.benchmarks.base import StepBenchmark, StepResult
from vla_eval.model_servers.predict import PredictModelServer
from vla_eval.model_servers.serve import serve
from vla_eval.protocol.numpy_codec import set_image_format

from benchmarks.slow_sims.env import ACTION_DIM, INSTRUCTION, SlowSim


class CostModelServer(PredictModelServer):
    def __init__(self, batch_ms: float, item_ms: float, max_batch_size: int, max_wait_ms: float) -> None:
        super().__init__(max_batch_size=max_batch_size, max_wait_time=max_wait_ms / 1000.0)
        self.batch_ms, self.item_ms = batch_ms, item_ms

    def predict_batch(self, obs_batch: list[Any], ctx_batch: list[Any]) -> list[dict[str, Any]]:
        b = len(obs_batch)
        time.sleep((self.batch_ms + self.item_ms * b) / 1000.0)
        return [{"actions": np.zeros(ACTION_DIM, np.float32), "batch_size": b} for _ in range(b)]

    def get_action_spec(self) -> dict[str, Any]:
        return {}

    def get_observation_spec(self) -> dict[str, Any]:
        return {}


class SlowSimBenchmark(StepBenchmark):
    render_backends: ClassVar[frozenset[str]] = frozenset({"cpu", "gpu"})

    @classmethod
    def configure_render(cls, mode: str) -> dict[str, str]:
        return {}  # nothing is rendered

    def __init__(self, rollouts: int, steps: int, seed: int, out_dir: str, image_format: str = "png") -> None:
        super().__init__()
        set_image_format(image_format)
        self.rollouts, self.steps, self.seed, self.out_dir = rollouts, steps, seed, out_dir
        self.sim: SlowSim | None = None

    def get_tasks(self) -> list[dict[str, Any]]:
        return [{"name": f"rollout{i:03d}", "rollout": i} for i in range(self.rollouts)]

    def reset(self, task: dict[str, Any]) -> Any:
        self.sim = SlowSim("vla-eval", int(task["rollout"]), self.steps, self.seed, self.out_dir)
        self.sim.start()
        return None

    def make_obs(self, raw_obs: Any, task: dict[str, Any]) -> dict[str, Any]:
        assert self.sim is not None
        frame, state = self.sim.observe()
        return {"images": {"frame": frame}, "state": state, "task_description": INSTRUCTION}

    def step(self, action: dict[str, Any]) -> StepResult:
        assert self.sim is not None
        done = self.sim.step(action["actions"], action.get("batch_size"))
        return StepResult(obs=None, reward=0.0, done=done, info={})

    def get_step_result(self, step_result: StepResult) -> dict[str, Any]:
        assert self.sim is not None
        self.sim.finish()
        return {"success": False}

    def get_metadata(self) -> dict[str, Any]:
        return {"max_steps": self.steps}


def main() -> None:
    p = argparse.ArgumentParser(description="vla-eval's batching model server with the benchmark's cost model")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--batch-ms", type=float, default=20.0)
    p.add_argument("--item-ms", type=float, default=1.0)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    a = p.parse_args()
    serve(CostModelServer(a.batch_ms, a.item_ms, a.max_batch_size, a.max_wait_ms), host="127.0.0.1", port=a.port)


if __name__ == "__main__":
    main()
