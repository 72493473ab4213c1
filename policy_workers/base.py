"""The interface every policy backend implements, and the metadata it publishes.

A backend sees a list of observations (one per request, each with a leading batch dimension of 1,
as the reference GR00T schema has it) and returns one action chunk per observation. How the list
becomes one forward pass (stacking, padding) is the backend's business; `rolloutq.policy_workers.batching`
has helpers. Adding a backend means adding one module under `policy_workers/backends/` that
defines a class named `Backend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Obs = dict[str, Any]
Chunk = dict[str, np.ndarray]


@dataclass
class PolicyMetadata:
    """What a simulator needs to talk to a policy; published to Redis as JSON.

    Schemas map flat dotted keys (`video.ego_view`, `state.left_arm`) to
    `{"dtype": "uint8", "shape": [1, 2, 256, 256, 3]}` for arrays or `{"kind": "text"}` for
    strings (sent as a list of lists of strings, shape (1, 1)).
    """

    model_id: str
    observation_schema: dict[str, dict[str, Any]]
    action_schema: dict[str, dict[str, Any]]
    chunk_length: int
    action_horizon: int
    device: str = "cpu"
    parameters: int = 0
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PolicyBackend(ABC):
    """A model (or a scripted controller) that maps a batch of observations to action chunks."""

    runs_inline: bool = False
    """True only for backends whose `infer` takes microseconds and never blocks (the `null`
    backend): the worker then calls it on its event loop, skipping the hop to the inference thread.
    Anything that runs a model must leave this False."""

    @abstractmethod
    def load(self) -> None:
        """Load weights / build the model. Called once per replica, before serving."""

    @abstractmethod
    def metadata(self) -> PolicyMetadata:
        """Schemas, chunk length, action horizon, model id. Valid after `load`."""

    @abstractmethod
    def infer(self, batch: list[Obs]) -> list[Chunk]:
        """One action chunk per observation, in order. Runs in an executor thread (unless `runs_inline`)."""
