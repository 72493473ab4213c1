"""Errors of the policy side."""

from __future__ import annotations


class PolicyWorkerError(Exception):
    """Base of every error raised by policy_workers."""


class BackendNotFound(PolicyWorkerError):
    """No backend module of that name."""


class BackendLoadError(PolicyWorkerError):
    """A backend could not load its model (missing file, missing package, bad config)."""


class SchemaMismatch(PolicyWorkerError):
    """An observation does not match the schema the backend publishes."""
