"""Shared fixtures: a real redis-server on a free port per test (killable and restartable)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from rolloutq.broker.embedded import EmbeddedRedis  # noqa: E402


@pytest.fixture
def redis_server():
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server) -> str:
    return redis_server.url
