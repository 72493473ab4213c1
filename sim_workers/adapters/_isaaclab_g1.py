"""The REAL_G1 schema on an Isaac Lab-style manager-based env driving a Unitree G1 (`schema="real_g1"`).

Each executed chunk step goes through the G1 translation (`rolloutq.sim_workers.real_g1`): chunk ->
flat (1, 28) command (left_arm 7, right_arm 7, left_hand 7, right_hand 7), then by joint name into
the env's joint-position action tensor (absolute targets; scale/offset of the action terms undone),
joints the command does not cover held at their defaults (`action_mode="joint_position"`), or
straight through for an env whose action is the 28-D command (`action_mode="passthrough"`).
Observations come from the articulation's joint positions, the wrist links' poses in the
`base_body` frame (pelvis; GR00T's 9-D encoding) and an ego camera (two-frame stack: the previous
query's frame and the current one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rolloutq.sim_workers import real_g1
from rolloutq.sim_workers.adapters._isaaclab_env import camera_rgb, resize_nearest, to_numpy
from rolloutq.sim_workers.base import Chunk, Obs

_ARM = ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow", "wrist_roll", "wrist_pitch", "wrist_yaw")
G1_ARM_JOINTS = {side: tuple(f"{side}_{j}_joint" for j in _ARM) for side in ("left", "right")}
G1_WAIST_JOINTS = ("waist_yaw_joint", "waist_roll_joint", "waist_pitch_joint")
# Dex3-1 hand (7 joints per hand), the hand of GR00T's REAL_G1 embodiment. Isaac Lab's Inspire-hand
# G1 names its finger joints differently: pass `hand_joints` for it.
G1_DEX3_HAND_JOINTS = {side: tuple(f"{side}_hand_{j}_joint" for j in
                                   ("thumb_0", "thumb_1", "thumb_2", "middle_0", "middle_1", "index_0", "index_1"))
                       for side in ("left", "right")}


def quat_to_matrix(q: np.ndarray, order: str = "wxyz") -> np.ndarray:
    """(..., 4) unit quaternions in `order` ('wxyz' or 'xyzw') -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, np.float64)
    if order == "xyzw":
        q = q[..., [3, 0, 1, 2]]
    elif order != "wxyz":
        raise ValueError(f"quaternion order must be 'wxyz' or 'xyzw', got {order!r}")
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _first(data: Any, *names: str) -> np.ndarray:
    """The first of `names` the articulation data has (Isaac Lab renamed body_pos_w to body_link_pos_w)."""
    for name in names:
        if hasattr(data, name):
            return to_numpy(getattr(data, name))
    raise AttributeError(f"articulation data has none of {names}")


class G1Schema:
    """REAL_G1 observations and actions for the N envs of `env` (a G1 articulation named `robot`)."""

    action_dims = dict(real_g1.ACTION_DIMS)

    def __init__(self, env: Any, quat_order: str, robot: str = "robot", camera: str = "obs:policy.robot_pov_cam",
                 image_size: int | None = None, action_mode: str = "joint_position",
                 hand_joints: dict[str, list[str]] | None = None,
                 wrist_bodies: tuple[str, str] = ("left_wrist_yaw_link", "right_wrist_yaw_link"),
                 base_body: str = "pelvis", instruction: str = "") -> None:
        self.env = env
        self.quat_order = quat_order
        self.robot = env.scene[robot]
        self.camera = camera
        self.image_size = int(image_size or real_g1.IMAGE_SIZE)
        self.action_mode = action_mode
        self.instruction = instruction or real_g1.INSTRUCTION
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
        self._prev: dict[int, np.ndarray] = {}

    # actions -----------------------------------------------------------------------------------------

    def _setup_actions(self, joint_names: list[str]) -> None:
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
                v = to_numpy(getattr(term, attr, 1.0 if attr == "_scale" else 0.0))
                v = v[0] if v.ndim == 2 else np.broadcast_to(v, (term.action_dim,))
                out.append(np.asarray(v, np.float32))
        self._scale = np.concatenate(scale)
        self._offset = np.concatenate(offset)
        default = to_numpy(self.robot.data.default_joint_pos)  # (N, J)
        self._default_target = default[:, [joint_names.index(c) for c in cols]].astype(np.float32)
        self._cmd_cols = np.array([cols.index(j) if j in cols else -1 for j in self.command_joints])

    def action_from_chunk(self, chunk: Chunk, t: int) -> np.ndarray:
        return np.asarray(real_g1.chunk_step_to_env_action(chunk, t), np.float32).reshape(-1)

    def idle_action(self) -> np.ndarray:
        """Hold the default pose (NaN entries mean 'default target' to `env_action`)."""
        return np.full(len(self.command_joints), np.nan, np.float32)

    def env_action(self, commands: np.ndarray) -> np.ndarray:
        """(N, 28) commands -> (N, action_dim) raw env actions."""
        if self.action_mode == "passthrough":
            return np.nan_to_num(commands).astype(np.float32)
        target = self._default_target.copy()
        ok = self._cmd_cols >= 0
        cmd = commands[:, ok]
        cols = self._cmd_cols[ok]
        target[:, cols] = np.where(np.isnan(cmd), target[:, cols], cmd)
        return ((target - self._offset) / self._scale).astype(np.float32)

    # observations ------------------------------------------------------------------------------------

    def forget(self, env_id: int) -> None:
        """A new episode on `env_id`: its first observation repeats its first frame."""
        self._prev.pop(env_id, None)

    def _camera(self, env_ids: list[int], env_obs: Any) -> dict[int, np.ndarray]:
        kind, _, where = self.camera.partition(":")
        if kind == "none":
            return {i: np.zeros((self.image_size, self.image_size, 3), np.uint8) for i in env_ids}
        if kind == "obs":
            value: Any = env_obs if env_obs is not None else self.env.observation_manager.compute()
            for part in where.split("."):
                value = value[part]
            images = to_numpy(value)
            if images.dtype != np.uint8:  # float images in [0, 1] or [0, 255]
                images = np.clip(images * (255.0 if images.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
            images = images[..., :3]
        elif kind == "sensor":
            images = camera_rgb(self.env.scene.sensors[where])
        else:
            raise ValueError(f"camera must be 'obs:<group>.<term>', 'sensor:<name>' or 'none', got {self.camera!r}")
        return {i: resize_nearest(images[i], self.image_size) for i in env_ids}

    def observe(self, env_ids: list[int], env_obs: Any) -> tuple[list[Obs], dict[int, np.ndarray]]:
        """(observations, the current camera frame per env)."""
        data = self.robot.data
        q = to_numpy(data.joint_pos)
        pos = _first(data, "body_link_pos_w", "body_pos_w")
        quat = _first(data, "body_link_quat_w", "body_quat_w")
        if self._base_id is not None:  # wrist poses in the base body's frame (pelvis)
            root_pos, root_rot = pos[:, self._base_id], quat_to_matrix(quat[:, self._base_id], self.quat_order)
        else:
            root_pos = _first(data, "root_link_pos_w", "root_pos_w")
            root_rot = quat_to_matrix(_first(data, "root_link_quat_w", "root_quat_w"), self.quat_order)
        cams = self._camera(env_ids, env_obs)
        out = []
        for i in env_ids:
            states = {k: np.array([q[i, j] if j >= 0 else 0.0 for j in ids], np.float32)
                      for k, ids in self._state_ids.items()}
            eef = []
            for b in self._wrist_ids:
                rel_pos = root_rot[i].T @ (pos[i, b] - root_pos[i])
                rel_rot = root_rot[i].T @ quat_to_matrix(quat[i, b], self.quat_order)
                eef.append(real_g1.pose_to_9d(rel_pos, rel_rot))
            cur = cams[i]
            frames = np.stack([self._prev.get(i, cur), cur])
            self._prev[i] = cur
            out.append(real_g1.build_observation(
                frames, left_eef=eef[0], right_eef=eef[1], left_arm=states["left_arm"],
                right_arm=states["right_arm"], left_hand=states["left_hand"], right_hand=states["right_hand"],
                waist=states["waist"], instruction=self.instruction))
        return out, cams
