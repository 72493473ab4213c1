"""A client-only install (`pip install rolloutq`, no extras) is all an external Python simulator
needs: in a fresh venv it pulls no torch, Ray or MuJoCo, installs nothing with a generic name at
the top of site-packages, and its client gets actions from a real policy worker."""

from __future__ import annotations

import os
import subprocess
import venv

import pytest

from tests.fault.conftest import ROOT, aof_redis, spawn, wait_worker  # noqa: F401 (fixtures)

SIMULATOR = """
import importlib.util, sys
import numpy as np
from rolloutq.broker.client import SyncPolicyClient
from rolloutq.broker.connection import connect_sync
from rolloutq.broker.settings import RedisSettings, ClientSettings
heavy = [m for m in ("torch", "ray", "mujoco", "typer", "broker", "controller") if importlib.util.find_spec(m)]
client = SyncPolicyClient(connect_sync(RedisSettings(url=sys.argv[1])), "p", settings=ClientSettings(deadline_s=30))
meta = client.metadata()
res = client.act("external-0", {"tag": np.array([7, 0], np.int64)})
print("HEAVY", heavy)
print("ECHO", res.chunk["echo"].tolist(), meta["model_id"])
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_client_only_install_serves_an_external_simulator(tmp_path, aof_redis, spawn):  # noqa: F811
    env_dir = tmp_path / "client-venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], env=env, capture_output=True,
                             text=True, timeout=540)
    assert install.returncode == 0, install.stderr[-3000:]
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    ours = {p.name for p in site.iterdir() if p.name in ("broker", "policy_workers", "sim_workers", "controller",
                                                         "monitoring", "rolloutq")}
    assert ours == {"rolloutq"}
    shipped = site / "rolloutq" / "policy_workers" / "checkpoints" / "g1_bc"  # package data: `eval`'s default policy
    assert sorted(p.name for p in shipped.iterdir()) == ["config.json", "model.safetensors"]

    worker = spawn("worker", redis_url=aof_redis.url, worker_id="w-ext")
    wait_worker(aof_redis.url, "w-ext", proc=worker)
    script = tmp_path / "sim.py"
    script.write_text(SIMULATOR)
    run = subprocess.run([str(py), str(script), aof_redis.url], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "HEAVY []" in run.stdout and "ECHO [7, 0] fault-test" in run.stdout, run.stdout
