"""A policy worker that cannot reach Redis still stops on SIGTERM or Ctrl-C, within a few seconds,
without a traceback (it used to retry publishing its metadata forever)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from rolloutq.broker.embedded import free_port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_without_redis_stops_on_a_signal(sig):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    proc = subprocess.Popen([sys.executable, "-m", "rolloutq.controller", "policy-worker", "--backend", "null",
                             "--redis-url", url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        time.sleep(4)  # loaded, and retrying Redis
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode in (0, 130, -sig), (proc.returncode, out[-2000:])
