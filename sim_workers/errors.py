"""Errors of the simulator side."""

from __future__ import annotations


class SimWorkerError(Exception):
    """Base of every error raised by sim_workers."""


class TaskNotFound(SimWorkerError):
    """No task of that name (built-in, registered, or import path), or it names no simulator adapter."""


class TaskUnavailable(SimWorkerError):
    """A task needs a package that is not installed (the message names the extra)."""


class EpisodeAborted(SimWorkerError):
    """An episode could not finish for infrastructure reasons (policy unreachable, shutdown)."""


class SimulatorFailed(SimWorkerError):
    """The simulator or its adapter raised during an episode (the cause is chained)."""


class BadActionChunk(SimWorkerError):
    """The policy's action chunk cannot be executed: non-finite values, or it does not fit the action
    schema the policy published. `reason` is the episode's machine-readable reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
