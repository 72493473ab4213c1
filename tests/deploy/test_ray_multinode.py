"""Ray cluster mode on a real two-node local cluster (`ray start --head` + `ray start --address`):
`rolloutq eval --address` places policy replicas on the node that offers `policy_node` and
simulator actors on the node that offers `sim_node`, with the controller's own Redis on the head.

The nodes run in process groups of their own (`ray start --block`), which teardown ends by id:
never `ray stop`, which would stop every Ray on a shared machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rolloutq.broker.embedded import free_port

from tests.deploy.composefile import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray_cluster]

RAY = str(Path(sys.executable).with_name("ray"))
ENTRY = "from rolloutq.controller.cli import app; app()"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "ROLLOUTQ_"))}
    # a loopback test cluster: no token to hand around (Ray >= 2.5x turns token auth on by default)
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT),
                "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    return env


class Node:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=_env(),
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        # whatever the node left in its process group (raylet, gcs, workers)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(5)


@pytest.fixture
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    temp_dir = Path("/tmp") / f"rq-ray-{os.getpid()}"  # short: Ray's socket paths must stay < 108 bytes
    port = free_port()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--object-store-memory", str(150 * 2**20)]
    nodes = [Node(["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", str(temp_dir),
                   "--resources", json.dumps({"sim_node": 2}), *common], tmp / "head.log")]
    address = f"127.0.0.1:{port}"
    try:
        _wait_started(nodes[0], 120)
        nodes.append(Node(["--address", address, "--resources", json.dumps({"policy_node": 1}), *common],
                          tmp / "worker.log"))
        _wait_started(nodes[1], 120)
        ids = _wait_nodes(address, 2, nodes, 60)
        yield address, ids, tmp
    finally:
        for n in reversed(nodes):
            n.stop()
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def _wait_started(node: Node, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in node.log.read_text(errors="replace"):
        assert node.proc.poll() is None, node.log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"ray start did not finish in {timeout}s"
        time.sleep(0.3)


def _wait_nodes(address: str, count: int, nodes: list[Node], timeout: float) -> dict[str, str]:
    """{resource name: node id} once `count` nodes are alive."""
    probe = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
             "print(json.dumps([[n['NodeID'], n['Resources']] for n in ray.nodes() if n['Alive']]))")
    deadline = time.monotonic() + timeout
    while True:
        for n in nodes:
            assert n.proc.poll() is None, n.log.read_text()[-3000:]
        got = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, timeout=60)
        if got.returncode == 0:
            alive = json.loads(got.stdout.strip().splitlines()[-1])
            if len(alive) >= count:
                return {r: nid for nid, res in alive for r in res if r in ("sim_node", "policy_node")}
        assert time.monotonic() < deadline, f"{count} Ray node(s) not up in {timeout}s: {got.stderr[-2000:]}"
        time.sleep(1.0)


PLACEMENT = """
import json, ray
from ray._private import state
ray.init(address=%r, logging_level="ERROR")
out = [[a["ActorClassName"], a["Address"]["NodeID"], a["State"]] for a in state.actors().values()]
print(json.dumps(out))
"""


@pytest.mark.timeout(360)
def test_eval_places_policy_replicas_and_sims_by_their_resources(cluster):
    address, ids, tmp = cluster
    assert set(ids) == {"sim_node", "policy_node"} and ids["sim_node"] != ids["policy_node"]
    out = tmp / "out"
    cmd = [sys.executable, "-c", ENTRY, "eval", "--address", address,
           "--set", "serve.resources={policy_node = 1}", "--set", "sim_resources={sim_node = 1}",
           "--set", "serve.num_cpus=1", "--set", "sim_num_cpus=0.5", "--sims", "2", "--envs-per-sim", "1",
           "--backend", "null", "--task", "reach", "--task-option", "image_size=64", "--task-option", "max_steps=24",
           "--episodes", "2", "--set", "video_episodes=0", "--set", "progress=false", "--set", "timeout_s=200",
           "--out", str(out)]
    got = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2
    # no --redis-url: the controller started redis-server on the head node, behind a password it never prints
    text = got.stdout + got.stderr
    assert re.search(r"embedded redis-server on [0-9.]+:\d+", text) and "redis://:" not in text, text[-3000:]
    assert summary["config"]["serve"]["resources"] == {"policy_node": 1.0}
    assert summary["config"]["sim_resources"] == {"sim_node": 1.0}

    seen = subprocess.run([sys.executable, "-c", PLACEMENT % address], env=_env(), capture_output=True, text=True,
                          timeout=60)
    assert seen.returncode == 0, seen.stderr[-3000:]
    actors = json.loads(seen.stdout.strip().splitlines()[-1])
    replicas = [node for cls, node, _ in actors if cls.startswith("ServeReplica:") and "PolicyDeployment" in cls]
    sims = [node for cls, node, _ in actors if cls == "SimActor"]
    assert replicas and set(replicas) == {ids["policy_node"]}, actors
    assert len(sims) == 2 and set(sims) == {ids["sim_node"]}, actors
