"""Test-only policy backends for fault injection (never shipped in policy_workers/backends/).

`FaultBackend` answers every observation with a zero `arm` chunk (so the `reach` task can drive
it) plus an `echo` of the observation's `tag` array (so a test can check that each reply answers
the request it claims to). Options make it slow, crash the whole process (`os._exit`, as a CUDA
fault or an OOM kill would) or raise when an observation carries the key `poison`, and publish a
strict observation schema for the malformed-input corpus.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from rolloutq.policy_workers.base import Chunk, Obs, PolicyBackend, PolicyMetadata

STRICT_SCHEMA = {
    "video.top": {"dtype": "uint8", "shape": [1, 1, 8, 8, 3]},
    "state.arm": {"dtype": "float32", "shape": [1, 1, 2], "finite": True},
    "annotation.human.task_description": {"kind": "text"},
    "tag": {"dtype": "int64", "shape": [2], "optional": True},
}


class FaultBackend(PolicyBackend):
    def __init__(self, delay_s: float = 0.0, poison: str = "", marker_dir: str = "", strict: bool = False,
                 **_: Any) -> None:
        self.delay_s = delay_s
        self.poison = poison  # "", "exit" or "raise"
        self.marker_dir = marker_dir
        self.strict = strict

    def load(self) -> None:
        self._arm = np.zeros((1, 40, 2), np.float32)

    def metadata(self) -> PolicyMetadata:
        return PolicyMetadata(
            model_id="fault-test",
            observation_schema=dict(STRICT_SCHEMA) if self.strict else {},
            action_schema={"arm": {"dtype": "float32", "shape": [1, 40, 2]}},
            chunk_length=40,
            action_horizon=8,
            extra={} if self.strict else {"accepts_any_observation": True},
        )

    def infer(self, batch: list[Obs]) -> list[Chunk]:
        for obs in batch:
            if self.poison and "poison" in obs:
                if self.marker_dir:
                    with open(os.path.join(self.marker_dir, "poison_attempts"), "a") as f:
                        f.write(f"{os.getpid()}\n")
                if self.poison == "exit":
                    os._exit(13)
                raise RuntimeError("poisoned observation /secret/internal/path.py line 42")
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for obs in batch:
            chunk = {"arm": self._arm}
            if "tag" in obs:
                chunk["echo"] = np.asarray(obs["tag"]).copy()
            out.append(chunk)
        return out
