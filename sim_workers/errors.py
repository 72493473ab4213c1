"""Errors of the simulator side."""

from __future__ import annotations


class SimWorkerError(Exception):
    """Base of every error raised by sim_workers."""


class TaskNotFound(SimWorkerError):
    """No task or adapter module of that name."""


class EpisodeAborted(SimWorkerError):
    """An episode could not finish for infrastructure reasons (policy unreachable, shutdown)."""
