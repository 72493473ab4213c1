"""`isaaclab`: a registered Isaac Lab manager-based environment, vectorised: one simulator process hosts
one env of `num_envs` sub-environments, and the envs that need an action chunk ask for it together
(`rolloutq.sim_workers.vector.run_vector`; with the task option `rows_per_request`, as one request).

    PYTHONPATH=. .venv-isaaclab/bin/python -m rolloutq.controller sim-worker --run RUN --envs 16 \\
        --redis-url URL      # for a sweep of `rolloutq eval --mode external --task isaaclab --task-option ...`

Environment (`rolloutq.sim_workers.adapters._isaaclab_env`):
- `framework="isaaclab"`: Isaac Lab 3.0, `task` a registered id (`Isaac-Cartpole-Camera`, ...) or
  `env_cfg="module:function"`, a config factory called with `num_envs` and `env_cfg_kwargs`.
  `presets` pick physics and renderers (default `("newton_mjwarp",)`: Newton on Warp, kit-less,
  runs on `device="cpu"`); `asset_root` is where Isaac Lab finds its assets (`ISAACSIM_ASSET_ROOT`);
  `launcher_args` go to Isaac Lab's `launch_simulation` (starts Isaac Sim's Kit for PhysX or RTX
  presets on a full install). Direct-workflow envs are refused.
- `framework="mjlab"`: mjlab's Isaac Lab-style env on MuJoCo-Warp (what ran here before 3.0).

Schema (`schema=`):
- `"env"` (default): the env's own observations and actions. `observations` maps an observation
  group (or `group.term` for a group that does not concatenate) to a rolloutq key; uint8 (H, W, C)
  values go as video (1, 1, H, W, C), anything else flattened to float32 (1, 1, D). Default: every
  concatenated 1-D group as `state.<group>`. `cameras` maps a camera sensor to a key, sent as
  (1, 1, H, W, 3) uint8 (default: every RGB camera as `video.<sensor>`; `image_size` resizes).
  The chunk key `action_key` (default `action`) holds the env action, `action_dim` wide.
- `"real_g1"`: a Unitree G1 in GR00T's REAL_G1 schema (`_isaaclab_g1`, its options pass through).

Episodes: `success_term` names a termination term that marks success; `success_on_time_limit`
scores an episode that lasts to the step cap (or the env's time limit) without terminating as a
success (balancing tasks such as cartpole). `max_steps` caps episodes (default: the env's limit).

Seeding: Isaac Lab and mjlab seed one global RNG. `reset(env_ids, seeds)` therefore resets the
envs one by one, re-seeding before each, so an episode's initial state depends on its seed only
(reset events draw for the env being reset). Auto-resets inside `step` are unseeded and are
immediately replaced by the runner's seeded reset.

Videos: `video_state(i)` is a copy of sub-environment i's image from the first camera of the `env`
schema (the camera the observations already read, at its own resolution), taken after the reset and
after each step of a recorded episode; `video_frame` returns it. A schema without a camera (and the
`real_g1` schema) gives None: no video.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from rolloutq.sim_workers.adapters._isaaclab_env import (
    QUATERNION_ORDER,
    camera_rgb,
    make_env,
    resize_nearest,
    rgb_cameras,
    to_numpy,
)
from rolloutq.sim_workers.adapters._isaaclab_g1 import G1Schema
from rolloutq.sim_workers.base import Chunk, Obs, StepResult, TaskInfo
from rolloutq.sim_workers.vector import SingleEnvView, VectorSimAdapter

TEXT_KEY = "annotation.human.task_description"


class EnvSchema:
    """The env's observation groups and camera frames out, its action tensor in."""

    def __init__(self, env: Any, observations: dict[str, str] | None = None, cameras: dict[str, str] | None = None,
                 image_size: int | None = None, action_key: str = "action", instruction: str = "",
                 text_key: str = TEXT_KEY) -> None:
        self.env = env
        self.action_dim = int(env.action_manager.total_action_dim)
        self.action_key = action_key
        self.action_dims = {action_key: self.action_dim}
        om = env.observation_manager
        self.observations = observations if observations is not None else {
            g: f"state.{g}" for g, shape in om.group_obs_dim.items()
            if om.group_obs_concatenate.get(g, True) and isinstance(shape, tuple) and len(shape) == 1}
        self.cameras = cameras if cameras is not None else {name: f"video.{name}" for name in rgb_cameras(env)}
        self.image_size = image_size
        self.instruction = instruction
        self.text_key = text_key

    def forget(self, env_id: int) -> None:
        pass

    def observe(self, env_ids: list[int], env_obs: Any) -> tuple[list[Obs], dict[int, np.ndarray]]:
        """(observations, the first camera's frame per env)."""
        values = {}
        for path, key in self.observations.items():
            value = env_obs
            for part in path.split("."):
                value = value[part]
            values[key] = to_numpy(value)
        frames = {key: camera_rgb(self.env.scene.sensors[name]) for name, key in self.cameras.items()}
        out, first = [], {}
        for i in env_ids:
            obs: Obs = {}
            for key, a in values.items():
                row = a[i]
                image = row.dtype == np.uint8 and row.ndim == 3
                obs[key] = row[None, None].copy() if image else row.astype(np.float32).reshape(1, 1, -1)
            for n, (key, images) in enumerate(frames.items()):
                img = resize_nearest(images[i], self.image_size) if self.image_size else images[i]
                obs[key] = np.ascontiguousarray(img)[None, None]
                if n == 0:
                    first[i] = img
            if self.text_key and self.instruction:
                obs[self.text_key] = [[self.instruction]]
            out.append(obs)
        return out, first

    def camera_frame(self, env_id: int) -> np.ndarray | None:
        """Env `env_id`'s image from the first camera as it is now (a copy), or None without a camera."""
        if not self.cameras:
            return None
        return camera_rgb(self.env.scene.sensors[next(iter(self.cameras))])[env_id].copy()

    def action_from_chunk(self, chunk: Chunk, t: int) -> np.ndarray:
        a = np.asarray(chunk[self.action_key], np.float32)[0, t].reshape(-1)
        if a.shape[0] != self.action_dim:
            raise ValueError(f"chunk key {self.action_key!r} has {a.shape[0]} values per step, the env takes "
                             f"{self.action_dim}")
        return a

    def idle_action(self) -> np.ndarray:
        return np.zeros(self.action_dim, np.float32)

    def env_action(self, actions: np.ndarray) -> np.ndarray:
        return actions.astype(np.float32)


class VectorAdapter(VectorSimAdapter):
    vectorize_by_default = True

    def __init__(self, task: str = "Isaac-Cartpole-Camera", num_envs: int = 8, framework: str = "isaaclab",
                 device: str = "cpu", presets: tuple[str, ...] | list[str] = ("newton_mjwarp",),
                 asset_root: str = "", launcher_args: dict[str, Any] | None = None, env_cfg: str = "",
                 env_cfg_kwargs: dict[str, Any] | None = None, schema: str = "env", success_term: str = "success",
                 success_on_time_limit: bool = False, max_steps: int | None = None, instruction: str = "",
                 env: Any = None, **schema_options: Any) -> None:
        self.runtime = contextlib.ExitStack()
        if env is None:
            env, self.runtime = make_env(framework, task, num_envs, device, tuple(presets), asset_root, env_cfg,
                                         env_cfg_kwargs, launcher_args)
        self.env = env
        self.num_envs = int(env.num_envs)
        # Without one reset of all envs first, per-env seeded resets of a fresh Isaac Lab 3.0 env on Newton
        # did not reproduce the reset's joint velocities (the cartpole: same seed, different velocities).
        env.reset()
        if schema == "env":
            self.schema: Any = EnvSchema(env, instruction=instruction, **schema_options)
        elif schema == "real_g1":
            self.schema = G1Schema(env, QUATERNION_ORDER[framework], instruction=instruction, **schema_options)
        else:
            raise ValueError(f"schema must be 'env' or 'real_g1', got {schema!r}")
        self.action_dims = self.schema.action_dims
        self.success_term = success_term
        self.success_on_time_limit = success_on_time_limit
        self.max_steps = int(max_steps or env.max_episode_length)
        name = f"{framework}:{task}" if not env_cfg else f"{framework}:{env_cfg}"
        self.info = TaskInfo(name=name, instruction=getattr(self.schema, "instruction", "") or task,
                             max_steps=self.max_steps, fps=1.0 / float(getattr(env, "step_dt", 0.1)),
                             description=f"{framework} manager-based env, {self.num_envs} envs, {schema} schema")
        self._obs: Any = None
        self._frames: dict[int, np.ndarray] = {}
        self._steps = np.zeros(self.num_envs, np.int64)

    def reset(self, env_ids: list[int], seeds: list[int]) -> None:
        import torch

        for i, seed in zip(env_ids, seeds, strict=True):
            ids = torch.tensor([i], dtype=torch.int64, device=self.env.device)
            self._obs, _ = self.env.reset(seed=int(seed), env_ids=ids)
            self.schema.forget(i)
            self._steps[i] = 0

    def observe(self, env_ids: list[int]) -> list[Obs]:
        env_obs = self._obs if self._obs is not None else self.env.observation_manager.compute()
        out, frames = self.schema.observe(env_ids, env_obs)
        self._frames.update(frames)
        return out

    def action_from_chunk(self, env_id: int, chunk: Chunk, t: int) -> np.ndarray:
        return self.schema.action_from_chunk(chunk, t)

    def idle_action(self, env_id: int) -> np.ndarray:
        return self.schema.idle_action()

    def step(self, actions: np.ndarray) -> list[StepResult]:
        import torch

        raw = torch.as_tensor(self.schema.env_action(np.asarray(actions)), device=self.env.device)
        self._obs, reward, terminated, truncated, _ = self.env.step(raw)
        self._steps += 1
        reward, terminated, truncated = to_numpy(reward), to_numpy(terminated).astype(bool), \
            to_numpy(truncated).astype(bool)
        tm = self.env.termination_manager
        success = (to_numpy(tm.get_term(self.success_term)).astype(bool) if self.success_term in tm.active_terms
                   else np.zeros(self.num_envs, bool))
        capped = self._steps >= self.max_steps
        if self.success_on_time_limit:
            success = success | (~terminated & (truncated | capped))
        done = terminated | truncated | success | capped
        return [StepResult(reward=float(reward[i]), done=bool(done[i]), success=bool(success[i]),
                           info={"terminated": bool(terminated[i]), "truncated": bool(truncated[i])})
                for i in range(self.num_envs)]

    def frame(self, env_id: int) -> np.ndarray | None:
        return self._frames.get(env_id)

    def video_state(self, env_id: int) -> np.ndarray | None:
        """The first camera's image of env `env_id` after each step of a recorded episode (the env renders
        its cameras every step anyway); None when the schema has no camera: no video."""
        draw = getattr(self.schema, "camera_frame", None)
        return None if draw is None else draw(env_id)

    def video_frame(self, env_id: int, state: np.ndarray | None) -> np.ndarray | None:
        return state

    def close(self) -> None:
        try:
            self.env.close()
        finally:
            self.runtime.close()


class Adapter(SingleEnvView):
    """One env (`num_envs=1`) for the per-slot `SimWorker`; prefer `VectorAdapter` + `run_vector`."""

    layout: dict[str, Any] = {"action_dims": {"action": 1}}  # the default task's, for `--backend null`

    def __init__(self, **options: Any) -> None:
        options["num_envs"] = 1
        super().__init__(VectorAdapter(**options))
