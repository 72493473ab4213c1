"""Plugins: the policy and the simulator of docs/EXTENDING.md, taken from the page itself into a
package in a temporary folder, run a real episode through redis-server, named by import path and
by the entry points the page's pyproject snippet declares; unknown names are refused in one line."""

from __future__ import annotations

import asyncio
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from rolloutq.broker.client import fetch_metadata
from rolloutq.broker.connection import connect_async
from rolloutq.broker.keys import Keys
from rolloutq.broker.settings import BatchSettings, ClientSettings, RedisSettings, WorkerSettings
from rolloutq.broker.sweep import EpisodeSpec, SweepQueue
from rolloutq.policy_workers import backends
from rolloutq.policy_workers.errors import BackendNotFound, BackendUnavailable
from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings
from rolloutq.sim_workers import tasks
from rolloutq.sim_workers.errors import TaskNotFound, TaskUnavailable
from rolloutq.sim_workers.worker import SimWorker, SimWorkerSettings, vector_adapter_class

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "EXTENDING.md").read_text()
IMPORT_PATHS = ("my_pkg.policy:PointMassPD", "my_pkg.env:PointMass")


def _code_files() -> dict[str, str]:
    """The page's Python blocks that open with a `# path` line, by path."""
    return {m[1]: m[2] for m in re.finditer(r"```python\n# (\S+\.py)\n(.*?)```", DOC, re.S)}


def _entry_points() -> dict[str, dict[str, str]]:
    block = next(m[1] for m in re.finditer(r"```toml\n(.*?)```", DOC, re.S) if "rolloutq.backends" in m[1])
    return tomllib.loads(block)["project"]["entry-points"]


@pytest.fixture
def my_pkg(tmp_path, monkeypatch) -> Path:
    """The page's package on sys.path, with a dist-info that registers its entry points."""
    files = _code_files()
    assert set(files) == {"my_pkg/policy.py", "my_pkg/env.py"}
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    for path, code in files.items():
        (tmp_path / path).write_text(code)
    dist = tmp_path / "my_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in names.items()) + "\n"
        for group, names in _entry_points().items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "my_pkg" or m.startswith("my_pkg.")]:
        monkeypatch.delitem(sys.modules, name)
    return tmp_path


async def _run_sweep(redis_url: str, backend: str, task: str, episodes: int) -> tuple[dict, list]:
    """Serve `backend` with a plain PolicyWorker, run `episodes` of `task` with a plain SimWorker."""
    redis = RedisSettings(url=redis_url)
    worker = PolicyWorker(PolicyWorkerSettings(backend=backend, redis=redis, worker=WorkerSettings(
        policy="p", block_ms=20, batch=BatchSettings(max_batch_size=4, max_wait_ms=2))))
    stop = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(stop))
    r = connect_async(redis)
    try:
        meta = await fetch_metadata(r, Keys(), "p", wait_s=30)
        config = {"policy": "p", "task": task, "task_options": {"max_steps": 200}, "action_horizon": 4,
                  "shards": 1, "video_episodes": 1}
        await SweepQueue(r, "plugins").create(config, [EpisodeSpec(i, 100 + i) for i in range(episodes)], 30.0)
        sim = SimWorker(SimWorkerSettings(run="plugins", redis=redis, envs=2, exit_when_drained=True,
                                          client=ClientSettings(deadline_s=30)))
        await asyncio.wait_for(sim.run(), 120)
        return meta, sim.done
    finally:
        stop.set()
        await asyncio.wait_for(worker_task, 30)
        await r.aclose()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("naming", ["import path", "entry point"])
def test_the_pages_policy_and_simulator_run_episodes_through_redis(my_pkg, redis_url, naming):
    if naming == "import path":
        backend, task = IMPORT_PATHS
    else:
        backend, = _entry_points()["rolloutq.backends"]
        task, = _entry_points()["rolloutq.tasks"]
    meta, records = asyncio.run(_run_sweep(redis_url, backend, task, episodes=4))
    assert meta["model_id"] == "point-mass-pd"
    assert sorted(r.episode for r in records) == [0, 1, 2, 3]
    assert [r.outcome for r in records] == ["success"] * 4  # the PD controller brings every start to rest
    assert all(0 < r.steps < 200 for r in records)


def test_entry_points_resolve_to_the_pages_classes(my_pkg):
    (backend, backend_target), = _entry_points()["rolloutq.backends"].items()
    (task, task_target), = _entry_points()["rolloutq.tasks"].items()
    assert (backend_target, task_target) == IMPORT_PATHS  # the page registers what it names by path
    assert backend in backends.available() and task in tasks.available()
    assert backends.backend_class(backend) is backends.backend_class(backend_target)
    assert tasks.task_class(task) is tasks.task_class(task_target)
    assert backend in backends.names_help() and task in tasks.names_help()
    env = tasks.make_task(task, max_steps=5)
    env.reset(3)
    assert env.observe()["state.point"].shape == (1, 1, 2)
    assert vector_adapter_class(task, {}) is None  # a plain SimAdapter runs one env per slot


def test_a_name_two_packages_register_is_refused_with_both_targets(my_pkg):
    other = my_pkg / "other-0.1.dist-info"
    other.mkdir()
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: other\nVersion: 0.1\n")
    (other / "entry_points.txt").write_text("[rolloutq.tasks]\npoint-mass = other.env:Mass\n")
    with pytest.raises(TaskNotFound, match="registered twice") as e:
        tasks.task_class("point-mass")
    assert "my_pkg.env:PointMass" in str(e.value) and "other.env:Mass" in str(e.value)


def test_builtins_are_registered_as_entry_points_in_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared["rolloutq.backends"] == backends._builtins()
    assert declared["rolloutq.tasks"] == tasks._builtins()
    assert {"cnn", "null", "visuomotor"} <= set(declared["rolloutq.backends"])
    assert {"reach", "g1-pickplace", "gym", "libero"} <= set(declared["rolloutq.tasks"])


def test_unknown_names_are_refused_in_one_line_listing_what_is_available():
    with pytest.raises(BackendNotFound) as b:
        backends.make_backend("no-such-policy")
    with pytest.raises(TaskNotFound) as t:
        tasks.make_task("no-such-task")
    for error, names, group in ((b.value, backends.available(), "rolloutq.backends"),
                                (t.value, tasks.available(), "rolloutq.tasks")):
        message = str(error)
        assert "\n" not in message
        assert f"available: {', '.join(names)};" in message
        assert group in message and ":" in message.split(";")[-1]  # how to plug in one's own
    assert "my_pkg.policy:MyPolicy" in str(b.value) and "my_pkg.env:MyEnv" in str(t.value)


def test_import_paths_that_do_not_resolve_say_what_is_missing(my_pkg):
    with pytest.raises(BackendNotFound, match="cannot import 'my_pkg.nothere'.*PYTHONPATH"):
        backends.backend_class("my_pkg.nothere:X")
    with pytest.raises(TaskNotFound, match="module 'my_pkg.env' has no 'Nope'"):
        tasks.task_class("my_pkg.env:Nope")
    with pytest.raises(TaskNotFound, match="not a simulator adapter: it has no reset, observe, step"):
        tasks.make_task("my_pkg.policy:PointMassPD")
    with pytest.raises(BackendNotFound, match="not a policy backend: it has no load, metadata, infer"):
        backends.make_backend("my_pkg.env:PointMass")
    (my_pkg / "my_pkg" / "needs_dep.py").write_text("import rolloutq_test_absent_dependency\n")
    with pytest.raises(BackendUnavailable, match="needs the module 'rolloutq_test_absent_dependency'"):
        backends.backend_class("my_pkg.needs_dep:Policy")


def test_a_builtin_missing_an_optional_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)  # import mujoco now fails as if not installed
    monkeypatch.delitem(sys.modules, "rolloutq.sim_workers.tasks.reach", raising=False)
    with pytest.raises(TaskUnavailable, match=r"task 'reach' needs the module 'mujoco'.*rolloutq\[sim\]"):
        tasks.task_class("reach")
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "rolloutq.policy_workers.backends.cnn", raising=False)
    with pytest.raises(BackendUnavailable, match=r"backend 'cnn' needs the module 'torch'.*rolloutq\[serve\]"):
        backends.backend_class("cnn")
    monkeypatch.setitem(sys.modules, "gymnasium", None)
    with pytest.raises(TaskUnavailable, match=r"task 'gym' cannot build an environment: .*rolloutq\[gym\]"):
        tasks.make_task("gym", env_id="Pendulum-v1")


def test_a_named_vector_adapter_vectorises_on_request_and_fills_a_slot_alone(my_pkg):
    (my_pkg / "my_pkg" / "vec.py").write_text(
        "from my_pkg.env import PointMass\n"
        "from rolloutq.sim_workers.vector import VectorSimAdapter\n\n"
        "class Points(VectorSimAdapter):\n"
        "    def __init__(self, num_envs=2):\n"
        "        self.envs = [PointMass() for _ in range(num_envs)]\n"
        "        self.num_envs, self.info = num_envs, self.envs[0].info\n"
        "    def reset(self, env_ids, seeds):\n"
        "        for i, s in zip(env_ids, seeds): self.envs[i].reset(s)\n"
        "    def observe(self, env_ids): return [self.envs[i].observe() for i in env_ids]\n"
        "    def step(self, actions): return [e.step(a) for e, a in zip(self.envs, actions)]\n"
        "    def action_from_chunk(self, env_id, chunk, t): return chunk['force'][0, t]\n"
        "    def idle_action(self, env_id): return [0.0]\n")
    name = "my_pkg.vec:Points"
    assert vector_adapter_class(name, {"vectorized": True}).__name__ == "Points"
    assert vector_adapter_class(name, {}) is None  # not vectorize_by_default
    env = tasks.make_task(name)
    env.reset(7)
    x0 = float(env.observe()["state.point"][0, 0, 0])
    result = env.step(np.array([1.0], np.float32))
    assert env.observe()["state.point"][0, 0, 0] > x0 and not result.done
