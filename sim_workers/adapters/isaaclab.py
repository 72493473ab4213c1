"""`isaaclab`: a vectorised Isaac Lab manager-based environment driving a Unitree G1 (REAL_G1 schema).

One process hosts `num_envs` environments (torch tensors, batch first, on the sim's device). At
each policy query every env whose chunk ran out becomes one request, all sent at once (see
`rolloutq.sim_workers.vector.run_vector`), so the policy worker batches them. Each executed chunk step goes
through the G1 translation (`rolloutq.sim_workers.real_g1`): chunk -> flat (1, 28) command (left_arm 7,
right_arm 7, left_hand 7, right_hand 7), then by joint name into the env's joint-position action
tensor (absolute targets; scale/offset of the action term undone), joints the command does not
cover held at their defaults. Observations are built from the articulation's joint positions,
the wrist links' poses in the root (pelvis) frame (GR00T's 9-D encoding), and an ego camera
(two-frame stack: the previous query's frame and the current one). Wrist poses are expressed in
the `base_body` frame (pelvis).

Frameworks (`framework=`):
- `isaaclab` (the target): Isaac Lab 2.x (2.2 pairs with Isaac Sim 5.0). `AppLauncher(headless=True,
  enable_cameras=True, device=...)` is started before the task modules are imported; the env
  is `gym.make(task, cfg=parse_env_cfg(task, device=..., num_envs=...))`. Target task ids:
  `Isaac-PickPlace-G1-InspireFTP-Abs-v0`, `Isaac-PickPlace-FixedBaseUpperBodyIK-G1-Abs-v0`,
  `Isaac-PickPlace-Locomanipulation-G1-Abs-v0`, or the task the reference setup registers
  (whose action is the flat 28-D joint command: use `action_mode="passthrough"`).
- `mjlab` (what runs on a CPU here): mjlab's Isaac Lab-style `ManagerBasedRlEnv` on
  MuJoCo-Warp, with a registered mjlab task id or an `env_cfg="module:function"` factory.

Seeding: Isaac Lab and mjlab seed one global RNG. `reset(env_ids, seeds)` therefore resets the
envs one by one, re-seeding before each, so an episode's initial state depends on its seed only
(reset events draw for the env being reset). Auto-resets inside `step` are unseeded and are
immediately replaced by the runner's seeded reset.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from rolloutq.sim_workers.base import Chunk, Obs, StepResult, TaskInfo
from rolloutq.sim_workers.vector import SingleEnvView, VectorSimAdapter

# --- G1 translation --------------------------------------------------------------------------------
# TO BE REPLACED by `rolloutq.sim_workers.real_g1` (branch `g1`) once it is on main: the adapter prefers that
# module and falls back to this minimal local copy of its contract only while it is absent.


def _real_g1() -> Any:
    try:
        return importlib.import_module("rolloutq.sim_workers.real_g1")
    except ModuleNotFoundError:
        return _LocalRealG1


class _LocalRealG1:
    """Minimal stand-in for `rolloutq.sim_workers.real_g1` (pose -> 9-D, observation builder, chunk step ->
    (1, 28)). Delete once `rolloutq.sim_workers.real_g1` is merged."""

    INSTRUCTION = "pick up the apple and place it on the plate"
    IMAGE_SIZE = 256
    FRAMES = 2
    ACTION_DIMS = {"left_wrist_eef_9d": 9, "right_wrist_eef_9d": 9, "left_hand": 7, "right_hand": 7,
                   "left_arm": 7, "right_arm": 7, "waist": 3, "base_height_command": 1, "navigate_command": 3}
    ENV_ACTION_KEYS = ("left_arm", "right_arm", "left_hand", "right_hand")

    @staticmethod
    def pose_to_9d(pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
        rot = np.asarray(rot, np.float64).reshape(3, 3)
        return np.concatenate([np.asarray(pos, np.float64).reshape(3), rot[0], rot[1]]).astype(np.float32)

    @staticmethod
    def build_observation(frames: np.ndarray, *, left_eef: np.ndarray, right_eef: np.ndarray,
                          left_arm: np.ndarray, right_arm: np.ndarray, left_hand: np.ndarray,
                          right_hand: np.ndarray, waist: np.ndarray, instruction: str = INSTRUCTION) -> Obs:
        parts = {"left_wrist_eef_9d": left_eef, "right_wrist_eef_9d": right_eef, "left_arm": left_arm,
                 "right_arm": right_arm, "left_hand": left_hand, "right_hand": right_hand, "waist": waist}
        obs: Obs = {"video.ego_view": np.ascontiguousarray(np.asarray(frames, np.uint8)[None])}
        for k, v in parts.items():
            v = np.asarray(v, np.float32).reshape(-1)
            obs[f"state.{k}"] = v.reshape(1, 1, v.shape[0])
        obs["annotation.human.task_description"] = [[instruction]]
        return obs

    @classmethod
    def chunk_step_to_env_action(cls, chunk: Chunk, t: int) -> np.ndarray:
        return np.concatenate([np.asarray(chunk[k], np.float32)[0, t] for k in cls.ENV_ACTION_KEYS])[None]


# --- joints of the REAL_G1 (1, 28) command, in order -----------------------------------------------

_ARM = ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow", "wrist_roll", "wrist_pitch", "wrist_yaw")
G1_ARM_JOINTS = {side: tuple(f"{side}_{j}_joint" for j in _ARM) for side in ("left", "right")}
G1_WAIST_JOINTS = ("waist_yaw_joint", "waist_roll_joint", "waist_pitch_joint")
# Dex3-1 hand (7 joints per hand), the hand of GR00T's REAL_G1 embodiment. Isaac Lab's Inspire-hand
# G1 names its finger joints differently: pass `hand_joints` for it.
G1_DEX3_HAND_JOINTS = {side: tuple(f"{side}_hand_{j}_joint" for j in
                                   ("thumb_0", "thumb_1", "thumb_2", "middle_0", "middle_1", "index_0", "index_1"))
                       for side in ("left", "right")}


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions (w, x, y, z) -> (..., 3, 3) rotation matrices."""
    w, x, y, z = np.moveaxis(np.asarray(q, np.float64), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of (H, W, C) to (size, size, C), without extra dependencies."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    rows = (np.arange(size) * h // size).clip(0, h - 1)
    cols = (np.arange(size) * w // size).clip(0, w - 1)
    return img[rows][:, cols]


# --- environment construction ----------------------------------------------------------------------


def _load_attr(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def make_env(framework: str, task: str, num_envs: int, device: str, env_cfg: str = "",
             env_cfg_kwargs: dict[str, Any] | None = None, headless: bool = True, enable_cameras: bool = True,
             app_launcher_args: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(env, app): a manager-based env with `num_envs` envs; `app` is Isaac Sim's app (or None)."""
    kwargs = dict(env_cfg_kwargs or {})
    if framework == "isaaclab":
        try:
            from isaaclab.app import AppLauncher
        except ImportError:
            raise ImportError("framework='isaaclab' needs Isaac Lab 2.x and Isaac Sim (see docs/INTEGRATIONS.md); "
                              "framework='mjlab' runs the same adapter on MuJoCo-Warp") from None
        launcher = AppLauncher(headless=headless, enable_cameras=enable_cameras, device=device,
                               **(app_launcher_args or {}))
        import gymnasium as gym
        import isaaclab_tasks  # noqa: F401  (registers the Isaac-* task ids)
        from isaaclab_tasks.utils import parse_env_cfg

        cfg = _load_attr(env_cfg)(num_envs=num_envs, **kwargs) if env_cfg else \
            parse_env_cfg(task, device=device, num_envs=num_envs)
        env = gym.make(task, cfg=cfg).unwrapped
        return env, launcher.app
    if framework == "mjlab":
        from mjlab.envs import ManagerBasedRlEnv

        if env_cfg:
            cfg = _load_attr(env_cfg)(num_envs=num_envs, **kwargs)
        else:
            import mjlab.tasks  # noqa: F401  (registers the Mjlab-* task ids)
            from mjlab.tasks.registry import load_env_cfg

            cfg = load_env_cfg(task, play=True)
        cfg.scene.num_envs = num_envs
        return ManagerBasedRlEnv(cfg, device=device), None
    raise ValueError(f"framework must be 'isaaclab' or 'mjlab', got {framework!r}")


# --- the adapter ---------------------------------------------------------------------------------------


class VectorAdapter(VectorSimAdapter):
    vectorize_by_default = True

    def __init__(self, task: str = "Isaac-PickPlace-G1-InspireFTP-Abs-v0", num_envs: int = 8,
                 framework: str = "isaaclab", device: str = "cuda:0", env_cfg: str = "",
                 env_cfg_kwargs: dict[str, Any] | None = None, headless: bool = True, enable_cameras: bool = True,
                 app_launcher_args: dict[str, Any] | None = None, robot: str = "robot",
                 camera: str = "obs:policy.robot_pov_cam", image_size: int | None = None,
                 action_mode: str = "joint_position", hand_joints: dict[str, list[str]] | None = None,
                 wrist_bodies: tuple[str, str] = ("left_wrist_yaw_link", "right_wrist_yaw_link"),
                 base_body: str = "pelvis",
                 success_term: str = "success", instruction: str = "", max_steps: int | None = None,
                 env: Any = None, **_: Any) -> None:
        self.g1 = _real_g1()
        self.app = None
        if env is None:
            env, self.app = make_env(framework, task, num_envs, device, env_cfg, env_cfg_kwargs, headless,
                                     enable_cameras, app_launcher_args)
        self.env = env
        self.num_envs = int(env.num_envs)
        self.robot = env.scene[robot]
        self.camera = camera
        self.image_size = int(image_size or self.g1.IMAGE_SIZE)
        self.action_mode = action_mode
        self.success_term = success_term
        self.max_steps = int(max_steps or env.max_episode_length)
        self.info = TaskInfo(name=f"isaaclab:{task}" if not env_cfg else f"{framework}:{env_cfg}",
                             instruction=instruction or self.g1.INSTRUCTION, max_steps=self.max_steps,
                             description=f"{framework} manager-based env, {self.num_envs} envs, REAL_G1 schema")
        names = list(self.robot.joint_names)
        hands = hand_joints or G1_DEX3_HAND_JOINTS
        self.command_joints = [*G1_ARM_JOINTS["left"], *G1_ARM_JOINTS["right"], *hands["left"], *hands["right"]]
        self._state_ids = {key: [names.index(j) if j in names else -1 for j in joints] for key, joints in {
            "left_arm": G1_ARM_JOINTS["left"], "right_arm": G1_ARM_JOINTS["right"],
            "left_hand": hands["left"], "right_hand": hands["right"], "waist": G1_WAIST_JOINTS}.items()}
        self.missing_joints = [j for j in [*self.command_joints, *G1_WAIST_JOINTS] if j not in names]
        bodies = list(self.robot.body_names)
        self._wrist_ids = [bodies.index(b) for b in wrist_bodies]
        self._base_id = bodies.index(base_body) if base_body in bodies else None
        self._setup_actions(names)
        self._obs: Any = None
        self._prev: dict[int, np.ndarray] = {}
        self._frames: dict[int, np.ndarray] = {}
        self._steps = np.zeros(self.num_envs, np.int64)

    # actions -----------------------------------------------------------------------------------------

    def _setup_actions(self, joint_names: list[str]) -> None:
        import torch

        am = self.env.action_manager
        self.action_dim = int(am.total_action_dim)
        if self.action_mode == "passthrough":
            if self.action_dim != len(self.command_joints):
                raise ValueError(f"passthrough needs an env action of {len(self.command_joints)} dims, "
                                 f"the env takes {self.action_dim}")
            return
        cols: list[str] = []
        scale, offset = [], []
        for name in am.active_terms:
            term = am.get_term(name)
            targets = list(getattr(term, "target_names", None) or getattr(term, "_joint_names", []))
            if len(targets) != term.action_dim:
                raise ValueError(f"action term {name!r} is not a joint-position term; use action_mode='passthrough' "
                                 "for an env whose action is the 28-D command")
            cols += targets
            for attr, out in (("_scale", scale), ("_offset", offset)):
                v = getattr(term, attr, 1.0 if attr == "_scale" else 0.0)
                v = _np(v)[0] if np.ndim(_np(v)) == 2 else np.broadcast_to(_np(v), (term.action_dim,))
                out.append(np.asarray(v, np.float32))
        self._scale = np.concatenate(scale)
        self._offset = np.concatenate(offset)
        default = _np(self.robot.data.default_joint_pos)  # (N, J)
        jid = [joint_names.index(c) for c in cols]
        self._default_target = default[:, jid].astype(np.float32)  # (N, action_dim)
        self._cmd_cols = np.array([cols.index(j) if j in cols else -1 for j in self.command_joints])
        self._torch = torch

    def action_from_chunk(self, env_id: int, chunk: Chunk, t: int) -> np.ndarray:
        return np.asarray(self.g1.chunk_step_to_env_action(chunk, t), np.float32).reshape(-1)

    def idle_action(self, env_id: int) -> np.ndarray:
        """Hold the default pose (NaN entries mean 'default target' to `_env_action`)."""
        return np.full(len(self.command_joints), np.nan, np.float32)

    def _env_action(self, commands: np.ndarray) -> Any:
        import torch

        if self.action_mode == "passthrough":
            return torch.as_tensor(np.nan_to_num(commands), dtype=torch.float32, device=self.env.device)
        target = self._default_target.copy()
        ok = self._cmd_cols >= 0
        cmd = commands[:, ok]
        cols = self._cmd_cols[ok]
        target[:, cols] = np.where(np.isnan(cmd), target[:, cols], cmd)
        raw = (target - self._offset) / self._scale
        return torch.as_tensor(raw, dtype=torch.float32, device=self.env.device)

    # reset / observe / step ----------------------------------------------------------------------------

    def reset(self, env_ids: list[int], seeds: list[int]) -> None:
        import torch

        for i, seed in zip(env_ids, seeds, strict=True):
            ids = torch.tensor([i], dtype=torch.int64, device=self.env.device)
            self._obs, _ = self.env.reset(seed=int(seed), env_ids=ids)
            self._prev.pop(i, None)
            self._steps[i] = 0

    def _camera(self, env_ids: list[int]) -> dict[int, np.ndarray]:
        kind, _, where = self.camera.partition(":")
        if kind == "none":
            return {i: np.zeros((self.image_size, self.image_size, 3), np.uint8) for i in env_ids}
        if kind == "obs":
            value: Any = self._obs if self._obs is not None else self.env.observation_manager.compute()
            for part in where.split("."):
                value = value[part]
        elif kind == "sensor":
            data = self.env.scene.sensors[where].data
            value = data.rgb if hasattr(data, "rgb") else data.output["rgb"]
        else:
            raise ValueError(f"camera must be 'obs:<group>.<term>', 'sensor:<name>' or 'none', got {self.camera!r}")
        images = _np(value)
        if images.dtype != np.uint8:  # float images in [0, 1] or [0, 255]
            images = np.clip(images * (255.0 if images.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return {i: _resize(images[i, ..., :3], self.image_size) for i in env_ids}

    def observe(self, env_ids: list[int]) -> list[Obs]:
        data = self.robot.data
        q = _np(data.joint_pos)
        pos = _np(getattr(data, "body_link_pos_w", None) if hasattr(data, "body_link_pos_w") else data.body_pos_w)
        quat = _np(getattr(data, "body_link_quat_w", None) if hasattr(data, "body_link_quat_w") else data.body_quat_w)
        if self._base_id is not None:  # wrist poses in the base body's frame (pelvis)
            root_pos, root_rot = pos[:, self._base_id], _quat_to_matrix(quat[:, self._base_id])
        else:
            root_pos = _np(data.root_link_pos_w if hasattr(data, "root_link_pos_w") else data.root_pos_w)
            root_rot = _quat_to_matrix(_np(data.root_link_quat_w if hasattr(data, "root_link_quat_w")
                                           else data.root_quat_w))
        cams = self._camera(env_ids)
        out = []
        for i in env_ids:
            states = {k: np.array([q[i, j] if j >= 0 else 0.0 for j in ids], np.float32)
                      for k, ids in self._state_ids.items()}
            eef = []
            for b in self._wrist_ids:
                rel_pos = root_rot[i].T @ (pos[i, b] - root_pos[i])
                rel_rot = root_rot[i].T @ _quat_to_matrix(quat[i, b])
                eef.append(self.g1.pose_to_9d(rel_pos, rel_rot))
            cur = cams[i]
            frames = np.stack([self._prev.get(i, cur), cur])
            self._prev[i] = cur
            self._frames[i] = cur
            out.append(self.g1.build_observation(
                frames, left_eef=eef[0], right_eef=eef[1], left_arm=states["left_arm"],
                right_arm=states["right_arm"], left_hand=states["left_hand"], right_hand=states["right_hand"],
                waist=states["waist"], instruction=self.info.instruction))
        return out

    def step(self, actions: np.ndarray) -> list[StepResult]:
        self._obs, reward, terminated, truncated, _ = self.env.step(self._env_action(np.asarray(actions)))
        self._steps += 1
        reward, terminated, truncated = _np(reward), _np(terminated).astype(bool), _np(truncated).astype(bool)
        tm = self.env.termination_manager
        success = (_np(tm.get_term(self.success_term)).astype(bool) if self.success_term in tm.active_terms
                   else np.zeros(self.num_envs, bool))
        done = terminated | truncated | success | (self._steps >= self.max_steps)
        return [StepResult(reward=float(reward[i]), done=bool(done[i]), success=bool(success[i]),
                           info={"terminated": bool(terminated[i]), "truncated": bool(truncated[i])})
                for i in range(self.num_envs)]

    def frame(self, env_id: int) -> np.ndarray | None:
        return self._frames.get(env_id)

    def close(self) -> None:
        self.env.close()
        if self.app is not None:
            self.app.close()


class Adapter(SingleEnvView):
    """One env (`num_envs=1`) for the per-slot `SimWorker`; prefer `VectorAdapter` + `run_vector`."""

    layout: dict[str, Any] = {"action_dims": dict(_LocalRealG1.ACTION_DIMS)}  # for `--backend null`

    def __init__(self, **options: Any) -> None:
        options["num_envs"] = 1
        super().__init__(VectorAdapter(**options))
