"""A simulator in another language: examples/node-sim (Node.js, npm `redis` + `@msgpack/msgpack`)
discovers the policy's schema from Redis and completes episodes against live policy workers; a
protocol version mismatch is refused with a clear error on either side."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import redis

from tests.deploy.composefile import ROOT

pytestmark = pytest.mark.slow

NODE_SIM = ROOT / "examples" / "node-sim"
ENTRY = "from controller.cli import app; app()"


def _need_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_SIM / "node_modules" / "redis").exists():
        pytest.skip("examples/node-sim has no node_modules: run `(cd examples/node-sim && npm ci)`")
    return node


@pytest.fixture(scope="module")
def module_redis():
    from broker.embedded import EmbeddedRedis

    server = EmbeddedRedis().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def workers(module_redis, tmp_path_factory):
    """Two live policy workers: `cnn` (a real network; image + state + text schema) and `null`
    (accepts any observation)."""
    redis_url = module_redis
    tmp_path = tmp_path_factory.mktemp("workers")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmds = {
        "cnn": ["policy-worker", "--backend", "cnn", "--policy", "cnnp", "--redis-url", redis_url,
                "-o", "image_key=video.top", "-o", "image_shape=[1,1,32,32,3]", "-o", 'state_dims={"state.arm":2}',
                "-o", 'action_dims={"arm":2}', "--max-wait-ms", "2"],
        "null": ["policy-worker", "--backend", "null", "--policy", "nullp", "--redis-url", redis_url,
                 "-o", 'action_dims={"force":2}'],
    }
    procs = {}
    for name, cmd in cmds.items():
        log = open(tmp_path / f"{name}.log", "wb")
        procs[name] = subprocess.Popen([sys.executable, "-c", ENTRY, *cmd], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 60
    while not all(r.hexists(f"rq:policy:{p}", "metadata") for p in ("cnnp", "nullp")):
        assert time.monotonic() < deadline, "policy workers did not publish metadata in 60 s"
        assert all(p.poll() is None for p in procs.values()), [
            (tmp_path / f"{n}.log").read_text() for n in procs]
        time.sleep(0.2)
    try:
        yield r
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        r.close()


def node_sim(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    node = _need_node()
    return subprocess.run([node, "sim.js", "--redis-url", redis_url, *args], cwd=NODE_SIM, capture_output=True,
                          text=True, timeout=90)


def _served(r: redis.Redis, policy: str) -> int:
    return sum(json.loads(v)["served_total"] for v in r.hgetall(f"rq:workers:{policy}").values())


@pytest.mark.timeout(150)
def test_node_simulator_completes_episodes_against_live_workers(module_redis, workers):
    _need_node()
    redis_url = module_redis
    r = workers
    got = node_sim(redis_url, "--policy", "cnnp", "--episodes", "3", "--envs", "2", "--max-steps", "24", "--json")
    assert got.returncode == 0, got.stderr
    summary = json.loads(got.stdout)
    assert summary["episodes"] == 3 and [e["episode"] for e in summary["results"]] == [0, 1, 2]
    assert summary["model_id"] == "cnn:random-init"
    # 24 steps each, 8 executed per chunk (the policy's published action horizon): 3 queries per episode
    assert all(e["steps"] == 24 or e["success"] for e in summary["results"])
    assert summary["policy_calls"] >= 3
    time.sleep(1.2)  # stats snapshots are published once a second
    assert _served(r, "cnnp") >= summary["policy_calls"]

    got = node_sim(redis_url, "--policy", "nullp", "--episodes", "2", "--envs", "1", "--max-steps", "16", "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["episodes"] == 2


@pytest.mark.timeout(120)
def test_protocol_version_mismatch_is_refused_clearly(module_redis, workers):
    _need_node()
    redis_url = module_redis
    r = workers
    # the client checks the version the policy publishes before sending anything
    got = node_sim(redis_url, "--policy", "nullp", "--episodes", "1", "--protocol-version", "2")
    assert got.returncode == 3
    assert "protocol version mismatch" in got.stderr and "speaks v1" in got.stderr

    # sent anyway, the worker answers unsupported_version and the client surfaces the worker's message
    got = node_sim(redis_url, "--policy", "nullp", "--episodes", "1", "--protocol-version", "2", "--no-version-check")
    assert got.returncode == 4
    assert "unsupported_version" in got.stderr and "not supported by this worker" in got.stderr

    # a policy that speaks a newer protocol than the client
    r.hset("rq:policy:nullp", "protocol", "2")
    try:
        got = node_sim(redis_url, "--policy", "nullp", "--episodes", "1")
    finally:
        r.hset("rq:policy:nullp", "protocol", "1")
    assert got.returncode == 3 and "policy nullp speaks v2" in got.stderr


def test_unreachable_redis_and_missing_policy_are_reported(redis_url):
    got = node_sim("redis://127.0.0.1:1/0")
    assert got.returncode == 2 and "Redis unreachable" in got.stderr
    got = node_sim(redis_url, "--policy", "nobody", "--wait-s", "0.5")
    assert got.returncode == 2 and "published no metadata" in got.stderr


def test_node_encoder_writes_the_same_bytes_as_the_python_codec():
    """Array maps with bin keys, exactly msgpack-numpy's layout (docs/PROTOCOL.md §5)."""
    import numpy as np

    from broker.codec import decode, encode

    node = _need_node()
    script = (
        'import { encodeMessage, ndarray } from "./sim.js";'
        "const obs = {"
        '  "state.arm": ndarray(Float32Array.from([0.5, -1.25]), [1, 1, 2], "float32"),'
        '  "video.top": ndarray(Uint8Array.from({length: 12}, (_, i) => i), [1, 1, 2, 2, 3], "uint8"),'
        '  "annotation.human.task_description": [["touch the red ball"]],'
        "};"
        'process.stdout.write(encodeMessage(obs).toString("hex"));'
    )
    got = subprocess.run([node, "--input-type=module", "-e", script], cwd=NODE_SIM, capture_output=True, text=True,
                         timeout=30)
    assert got.returncode == 0, got.stderr
    obs = {
        "state.arm": np.array([[[0.5, -1.25]]], np.float32),
        "video.top": np.arange(12, dtype=np.uint8).reshape(1, 1, 2, 2, 3),
        "annotation.human.task_description": [["touch the red ball"]],
    }
    assert bytes.fromhex(got.stdout) == encode(obs)
    back = decode(bytes.fromhex(got.stdout))
    assert back["state.arm"].tolist() == [[[0.5, -1.25]]]
