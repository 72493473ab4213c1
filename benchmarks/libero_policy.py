"""A labelled timing double of the GR00T N1.7 network in the LIBERO layout, for checking
benchmarks/libero_gpu.py on a CPU machine.

The network itself is the product's: the gr00t backend with `embodiment="libero"`
(`rolloutq.policy_workers.backends._gr00t_layout.LIBERO`), in `n17-random` mode the GR00T N1.7
network, random weights. `SleepPolicy` stands in for it behind the same backend
(`policy_factory = "benchmarks.libero_policy:SleepPolicy"`): it sleeps 17 ms + 3.1 ms per row, close
to the N1.7 network's H100 times at B = 1 and 64, and returns zero chunks; its figures are not GPU
figures, and the backend's metadata carries its label.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from rolloutq.policy_workers.backends._gr00t_layout import LIBERO


class SleepPolicy:
    """TIMING DOUBLE of the N1.7 network with the LIBERO layout: sleeps a_ms + b_ms x B, returns zeros."""

    label = "timing double (sleep), not a network"

    def __init__(self, settings: Any = None, a_ms: float = 17.0, b_ms: float = 3.1) -> None:
        self.a_ms, self.b_ms = a_ms, b_ms
        self.spec = LIBERO

    def get_action(self, obs: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        b = next(iter(obs["state"].values())).shape[0]
        time.sleep((self.a_ms + self.b_ms * b) / 1000)
        return ({k: np.zeros((b, LIBERO.chunk_length, d), np.float32) for k, d in LIBERO.action.items()},
                {"note": self.label})
