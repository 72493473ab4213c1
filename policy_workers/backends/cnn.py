"""`cnn` backend: a small real torch network for the CPU (image encoder + state MLP -> action chunk).

Its observation and action layout is given by the task it serves (image keys, state keys and
action dims), so it fits any built-in task. Weights come from a safetensors file; without one it
runs with random weights (say so: its `model_id` then ends in "random-init"). A batch of requests
is one forward pass.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rolloutq.policy_workers.base import Chunk, Obs, PolicyBackend, PolicyMetadata
from rolloutq.policy_workers.batching import stack
from rolloutq.policy_workers.errors import BackendLoadError
from torch import nn


class _Net(nn.Module):
    def __init__(self, frames: int, state_dim: int, out_dim: int, width: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3 * frames, width, 5, stride=4, padding=2), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )
        self.state = nn.Sequential(nn.Linear(max(state_dim, 1), 64), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(width * 16 + 64, 256), nn.ReLU(), nn.Linear(256, out_dim))

    def forward(self, images: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.encoder(images), self.state(state)], dim=1))


class Backend(PolicyBackend):
    def __init__(
        self,
        image_key: str = "video.ego_view",
        image_shape: tuple[int, ...] = (1, 2, 256, 256, 3),
        state_dims: dict[str, int] | None = None,
        action_dims: dict[str, int] | None = None,
        text_key: str | None = "annotation.human.task_description",
        chunk_length: int = 40,
        action_horizon: int = 8,
        weights: str | None = None,
        device: str = "cpu",
        threads: int = 0,
        seed: int = 0,
        **_: Any,
    ) -> None:
        self.image_key = image_key
        self.image_shape = tuple(image_shape)
        self.state_dims = dict(state_dims or {"state.joints": 7})
        self.action_dims = dict(action_dims or {"action": 7})
        self.text_key = text_key
        self.chunk_length = chunk_length
        self.action_horizon = action_horizon
        self.weights = weights
        self.device = device
        self.threads = threads
        self.seed = seed
        self.net: _Net | None = None
        self.load_time_s = 0.0

    def load(self) -> None:
        t0 = time.perf_counter()
        if self.threads:
            torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        frames = self.image_shape[1]
        out = self.chunk_length * sum(self.action_dims.values())
        self.net = _Net(frames, sum(self.state_dims.values()), out).to(self.device).eval()
        if self.weights:
            path = Path(self.weights)
            if not path.exists():
                raise BackendLoadError(f"weights file {path} not found; pass --option weights=PATH or leave it "
                                       "unset for random weights")
            from safetensors.torch import load_file

            self.net.load_state_dict(load_file(str(path), device=self.device))
        self.load_time_s = time.perf_counter() - t0

    def metadata(self) -> PolicyMetadata:
        obs: dict[str, dict[str, Any]] = {self.image_key: {"dtype": "uint8", "shape": list(self.image_shape)}}
        for k, d in self.state_dims.items():
            obs[k] = {"dtype": "float32", "shape": [1, 1, d], "finite": True}
        if self.text_key:
            obs[self.text_key] = {"kind": "text"}
        params = sum(p.numel() for p in self.net.parameters()) if self.net else 0
        return PolicyMetadata(
            model_id=f"cnn:{Path(self.weights).name if self.weights else 'random-init'}",
            observation_schema=obs,
            action_schema={k: {"dtype": "float32", "shape": [1, self.chunk_length, d]}
                           for k, d in self.action_dims.items()},
            chunk_length=self.chunk_length,
            action_horizon=self.action_horizon,
            device=self.device,
            parameters=params,
            description="small CNN + state MLP" + ("" if self.weights else " with random weights (not trained)"),
            extra={"load_time_s": round(self.load_time_s, 3)},
        )

    @torch.inference_mode()
    def infer(self, batch: list[Obs]) -> list[Chunk]:
        assert self.net is not None, "load() first"
        x = stack(batch)
        img = torch.from_numpy(np.ascontiguousarray(x[self.image_key])).to(self.device)
        b, t, h, w, c = img.shape
        img = img.permute(0, 1, 4, 2, 3).reshape(b, t * c, h, w).float().div_(255.0)
        state = torch.cat([torch.from_numpy(np.asarray(x[k], np.float32)).reshape(b, -1) for k in self.state_dims],
                          dim=1).to(self.device) if self.state_dims else torch.zeros(b, 1)
        out = self.net(img, state).reshape(b, self.chunk_length, -1).cpu().numpy()
        chunks: list[Chunk] = []
        for i in range(b):
            chunk, start = {}, 0
            for k, d in self.action_dims.items():
                chunk[k] = out[i:i + 1, :, start:start + d].copy()
                start += d
            chunks.append(chunk)
        return chunks
