"""The interface every simulator adapter implements.

An adapter owns one environment: it resets it from a seed, steps it with one env action, and
translates in both directions between the simulator and the policy's schema (observation ->
policy observation; one step of an action chunk -> env action). Everything else (querying the
policy, action chunking, timing, recording) is the runner's job, so a new simulator is one module
under `sim_workers/tasks/` (built-in tasks) or `sim_workers/adapters/` (external simulators) that
defines a class named `Adapter`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Obs = dict[str, Any]
Chunk = dict[str, np.ndarray]


@dataclass
class TaskInfo:
    """What a report needs to say about a task."""

    name: str
    instruction: str
    max_steps: int
    description: str = ""
    fps: float = 10.0
    """Env steps per second of simulated time: the frame rate of the run's videos."""


@dataclass
class StepResult:
    reward: float
    done: bool
    success: bool
    info: dict[str, Any] = field(default_factory=dict)


class SimAdapter(ABC):
    """One environment, seen from the rollout runner."""

    info: TaskInfo

    @abstractmethod
    def reset(self, seed: int) -> None:
        """Reset deterministically from `seed` (same seed, same initial state, on any machine)."""

    @abstractmethod
    def observe(self) -> Obs:
        """The current observation in the policy's schema.

        Called only when the policy must be queried (once per executed chunk), so adapters render
        cameras here and not in `step`.
        """

    @abstractmethod
    def step(self, action: np.ndarray) -> StepResult:
        """Apply one env action; `done` is true on success, failure or the step cap."""

    @abstractmethod
    def action_from_chunk(self, chunk: Chunk, t: int) -> np.ndarray:
        """The env action for step `t` (0-based) of a policy action chunk. The runners ask the
        policy for the first `action_horizon` steps only, so the chunk holds just those."""

    def frame(self) -> np.ndarray | None:
        """The latest camera image (H, W, 3) uint8, for videos in reports; None if there is none."""
        return None

    def video_state(self) -> Any:
        """What `video_frame` needs to draw the scene as it is now, for one frame of an episode's
        video per env step. Called after every step of a recorded episode, so it must be cheap (a
        copy of positions); the frames are drawn after the episode, out of its closed loop.
        Default: the current `frame()`."""
        return self.frame()

    def video_frame(self, state: Any) -> np.ndarray | None:
        """The (H, W, 3) uint8 image of a state from `video_state`; called after the episode ended
        (it may change the simulator's state: the next episode starts with `reset`)."""
        return state

    def close(self) -> None:
        """Free renderers and simulator state."""
