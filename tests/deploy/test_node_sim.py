"""A simulator in another language: examples/node-sim (Node.js, npm `redis` + `@msgpack/msgpack`)
discovers the policy's schema from Redis and completes episodes against live policy workers (one
shard and several); a protocol version mismatch is refused with a clear error on either side; its
resends follow docs/PROTOCOL.md (same seq and nonce, the remaining deadline) and it deletes its
requests when it gives up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib

import pytest
import redis

from tests.deploy.composefile import ROOT

pytestmark = pytest.mark.slow

NODE_SIM = ROOT / "examples" / "node-sim"
ENTRY = "from rolloutq.controller.cli import app; app()"


def _need_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_SIM / "node_modules" / "redis").exists():
        pytest.skip("examples/node-sim has no node_modules: run `(cd examples/node-sim && npm ci)`")
    return node


@pytest.fixture(scope="module")
def module_redis():
    from rolloutq.broker.embedded import EmbeddedRedis

    server = EmbeddedRedis().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def workers(module_redis, tmp_path_factory):
    """Three live policy workers: `cnn` (a real network; image + state + text schema), `null`
    (accepts any observation) and `null` on three shards (`policy-worker --shards 3`)."""
    redis_url = module_redis
    tmp_path = tmp_path_factory.mktemp("workers")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmds = {
        "cnn": ["policy-worker", "--backend", "cnn", "--policy", "cnnp", "--redis-url", redis_url,
                "-o", "image_key=video.top", "-o", "image_shape=[1,1,32,32,3]", "-o", 'state_dims={"state.arm":2}',
                "-o", 'action_dims={"arm":2}', "--max-wait-ms", "2"],
        "null": ["policy-worker", "--backend", "null", "--policy", "nullp", "--redis-url", redis_url,
                 "-o", 'action_dims={"force":2}'],
        "sharded": ["policy-worker", "--backend", "null", "--policy", "shardp", "--redis-url", redis_url,
                    "--shards", "3", "-o", 'action_dims={"force":2}'],
    }
    procs = {}
    for name, cmd in cmds.items():
        log = open(tmp_path / f"{name}.log", "wb")
        procs[name] = subprocess.Popen([sys.executable, "-c", ENTRY, *cmd], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 60
    while not all(r.hexists(f"rq:policy:{p}", "metadata") for p in ("cnnp", "nullp", "shardp")):
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
def test_sharded_policy_worker_serves_every_shard(module_redis, workers):
    """`policy-worker --shards 3` publishes the count; a simulator maps each rollout to
    crc32(rollout) mod 3, and the worker answers on the reply stream of the request's own shard."""
    _need_node()
    r = workers
    assert r.hget("rq:policy:shardp", "shards") == b"3"
    rollouts = [f"shardsim.e{i}" for i in range(6)]
    shards = {zlib.crc32(x.encode()) % 3 for x in rollouts}
    assert len(shards) > 1  # the test means something only when rollouts land on several shards
    got = node_sim(module_redis, "--policy", "shardp", "--episodes", "6", "--envs", "3", "--max-steps", "16",
                   "--sim-id", "shardsim", "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["episodes"] == 6
    for x in rollouts:
        assert r.xlen(f"rq:rep:{{shardp#{zlib.crc32(x.encode()) % 3}}}:{x}") >= 1, x


@pytest.mark.timeout(120)
def test_protocol_version_mismatch_is_refused_clearly(module_redis, workers):
    _need_node()
    redis_url = module_redis
    r = workers
    assert r.hget("rq:policy:nullp", "protocol") == b"2"
    # the client checks the version the policy publishes before sending anything
    got = node_sim(redis_url, "--policy", "nullp", "--episodes", "1", "--protocol-version", "1")
    assert got.returncode == 3
    assert "protocol version mismatch" in got.stderr and "speaks v2" in got.stderr

    # sent anyway, the worker answers unsupported_version on the rollout's reply stream, echoing the
    # nonce, and the client surfaces the worker's message
    got = node_sim(redis_url, "--policy", "nullp", "--episodes", "1", "--protocol-version", "1", "--no-version-check")
    assert got.returncode == 4
    assert "unsupported_version" in got.stderr and "not supported by this worker" in got.stderr

    # a policy that speaks a newer protocol than the client; then one whose workers speak both
    r.hset("rq:policy:nullp", "protocol", "3")
    try:
        got = node_sim(redis_url, "--policy", "nullp", "--episodes", "1")
        assert got.returncode == 3 and "policy nullp speaks v3" in got.stderr
        r.hset("rq:policy:nullp", "protocol", "2,3")
        got = node_sim(redis_url, "--policy", "nullp", "--episodes", "1", "--max-steps", "8")
        assert got.returncode == 0, got.stderr
    finally:
        r.hset("rq:policy:nullp", "protocol", "2")


@pytest.mark.timeout(120)
def test_resends_carry_the_same_nonce_and_the_remaining_deadline_and_are_cancelled(module_redis, workers):
    """No worker serves policy `ghostp`: the simulator resends after each reply timeout (same seq
    and nonce, `resend` = n, `orig` = the first entry, `ttl_ms` = what is left of the deadline),
    gives up at the deadline, and deletes its request entries (cancel)."""
    _need_node()
    r = workers
    r.hset("rq:policy:ghostp", mapping={"metadata": json.dumps({"observation_schema": {}, "action_schema": {},
                                                                 "action_horizon": 8}),
                                        "protocol": "2", "shards": "1"})
    stream = "rq:req:{ghostp#0}"
    seen: dict[bytes, dict[bytes, bytes]] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for entry_id, fields in r.xrange(stream):
                seen.setdefault(entry_id, fields)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        got = node_sim(module_redis, "--policy", "ghostp", "--episodes", "1", "--deadline-ms", "2400",
                       "--reply-timeout-ms", "500", "--max-resends", "2")
    finally:
        done.set()
        watcher.join(5)
    assert got.returncode == 4 and "no reply" in got.stderr and "3 sends" in got.stderr
    sends = [seen[i] for i in sorted(seen, key=lambda i: tuple(map(int, i.split(b"-"))))]
    assert len(sends) == 3
    first = min(seen, key=lambda i: tuple(map(int, i.split(b"-"))))
    assert {(f[b"seq"], f[b"nonce"]) for f in sends} == {(b"0", sends[0][b"nonce"])}
    assert 8 <= len(sends[0][b"nonce"]) <= 64
    assert b"reply_to" not in sends[0] and b"resend" not in sends[0] and sends[0][b"v"] == b"2"
    assert [f.get(b"resend") for f in sends[1:]] == [b"1", b"2"]
    assert all(f[b"orig"] == first for f in sends[1:])
    ttls = [int(f[b"ttl_ms"]) for f in sends]
    assert ttls[0] == 2400 and ttls[0] > ttls[1] > ttls[2] > 0
    assert r.xlen(stream) == 0  # cancelled: nothing left for a worker to infer


def test_unreachable_redis_and_missing_policy_are_reported(redis_url):
    got = node_sim("redis://127.0.0.1:1/0")
    assert got.returncode == 2 and "Redis unreachable" in got.stderr
    got = node_sim(redis_url, "--policy", "nobody", "--wait-s", "0.5")
    assert got.returncode == 2 and "published no metadata" in got.stderr


def test_node_encoder_writes_the_same_bytes_as_the_python_codec():
    """Array maps with bin keys, exactly msgpack-numpy's layout (docs/PROTOCOL.md §5)."""
    import numpy as np
    from rolloutq.broker.codec import decode, encode

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
