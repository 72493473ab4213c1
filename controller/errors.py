"""Errors of the controller."""

from __future__ import annotations


class ControllerError(Exception):
    """Base of every error raised by the controller."""


class EvalFailed(ControllerError):
    """An evaluation run could not complete."""
