"""Errors of the policy side."""

from __future__ import annotations


class PolicyWorkerError(Exception):
    """Base of every error raised by policy_workers."""


class BackendNotFound(PolicyWorkerError):
    """No backend of that name (built-in, registered, or import path), or it names no backend."""


class BackendUnavailable(PolicyWorkerError):
    """A backend's module imports a package that is not installed (the message names the extra)."""


class BackendLoadError(PolicyWorkerError):
    """A backend could not load its model (missing file, missing package, bad config)."""


class SchemaMismatch(PolicyWorkerError):
    """An observation does not match the schema the backend publishes."""
