"""The model alone (A): a policy backend's forward timed in a plain loop, no serving around it.

A is the yardstick for C: rolloutq's throughput at a batch size is compared with what the model
itself does at that batch size. For a GR00T-like backend (one with `.policy.get_action`) A times
`get_action` on a stacked, page-locked batch, as the backend's own batches are; for any other
backend it times `infer` on a list of observations. The reference design (B) calls `forward_one`.

`SleepPolicy` is a labelled timing double of the GR00T network for checking GPU scenarios on a
CPU machine (`policy_factory = "benchmarks.harness.model:SleepPolicy"`); its figures are not
GPU figures.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rolloutq.policy_workers.backends._gr00t_layout import REAL_G1

from benchmarks.harness.load import flat_obs, nested_obs


@dataclass(frozen=True)
class PolicySpec:
    """The backend under test, as every phase of a scenario builds it."""

    backend: str
    options: dict[str, Any]
    graph_options: dict[str, Any]  # merged into options where a phase asks for `graphs`

    def backend_options(self, graphs: bool) -> dict[str, Any]:
        return {**self.options, **(self.graph_options if graphs else {})}


class SleepPolicy:
    """TIMING DOUBLE of the GR00T network: sleeps a_ms + b_ms x B, returns zero chunks."""

    label = "timing double (sleep), not a network"

    def __init__(self, settings: Any = None, a_ms: float = 20.0, b_ms: float = 0.5) -> None:
        self.a_ms, self.b_ms = a_ms, b_ms
        self.spec = REAL_G1

    def get_action(self, obs: dict) -> tuple[dict, dict]:
        b = next(iter(obs["video"].values())).shape[0]
        time.sleep((self.a_ms + self.b_ms * b) / 1000)
        return {k: np.zeros((b, 40, d), np.float32) for k, d in REAL_G1.action.items()}, {"note": self.label}


def build_backend(policy: PolicySpec, graphs: bool = False) -> Any:
    from rolloutq.policy_workers.backends import make_backend

    return make_backend(policy.backend, **policy.backend_options(graphs))


class ModelUnderTest:
    def __init__(self, policy: PolicySpec, graphs: bool = False) -> None:
        self.backend = build_backend(policy, graphs)
        self.load_s = 0.0

    def load(self) -> ModelUnderTest:
        t = time.perf_counter()
        self.backend.load()
        self.load_s = time.perf_counter() - t
        return self

    @property
    def _network(self) -> Any:
        return getattr(self.backend, "policy", None) if hasattr(getattr(self.backend, "policy", None),
                                                                  "get_action") else None

    def batch(self, b: int) -> Any:
        if self._network is None:
            return [flat_obs(i) for i in range(b)]
        from rolloutq.policy_workers.backends._gr00t_layout import check_nested, stack

        nested = [nested_obs(i) for i in range(b)]
        for obs in nested:
            check_nested(obs, self.backend.spec)
        batch = stack(nested, self.backend.spec)
        if getattr(getattr(self._network, "device", None), "type", None) == "cuda":
            import torch  # page-locked frames, as the backend's own batch buffer holds them

            for key, video in batch["video"].items():
                pinned = torch.empty(video.shape, dtype=torch.uint8, pin_memory=True).numpy()
                pinned[...] = video
                batch["video"][key] = pinned
        return batch

    def forward(self, batch: Any) -> Any:
        if self._network is None:
            return self.backend.infer(batch)
        return self._network.get_action(batch)[0]  # ends with .cpu(): synchronised

    def forward_one(self, obs: Any) -> dict[str, Any]:
        """One request's forward, as the reference design runs it (B = 1)."""
        if self._network is None:
            return self.backend.infer([obs])[0]
        return self._network.get_action(obs)[0]

    def time(self, b: int, warmup: int = 2, reps: int = 6) -> dict[str, Any]:
        """Median of `reps` forwards at batch size `b` after `warmup` untimed ones."""
        batch = self.batch(b)
        for _ in range(warmup):
            self.forward(batch)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            self.forward(batch)
            times.append((time.perf_counter() - t) * 1e3)
        med = statistics.median(times)
        return {"batch": b, "median_ms": round(med, 2), "min_ms": round(min(times), 2),
                "max_ms": round(max(times), 2), "chunks_per_s": round(b * 1000 / med, 2)}

    def describe(self) -> dict[str, Any]:
        meta = self.backend.metadata()
        return {"load_s": round(self.load_s, 1), "model_id": meta.model_id, "description": meta.description,
                "parameters": int(getattr(self.backend, "parameters", 0) or 0),
                "cuda_graphs": meta.extra.get("cuda_graphs")}
