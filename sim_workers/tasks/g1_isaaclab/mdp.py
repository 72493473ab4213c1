"""The task's own Isaac Lab terms: the seeded layout, the hand action that grasps by attaching, success.

Isaac Lab's stock terms cover the rest (arm joint targets, time-out, object height). These three
carry the rules of the MuJoCo task (`sim_workers/tasks/g1_pickplace/`), so that the same seed gives
the same layout and the same success rule applies:

* `SeededLayout` places apple and plate from an episode's seed with the MuJoCo task's own sampler.
  Isaac Lab seeds one global RNG per process; a per-env seed table is what makes an episode's
  layout depend on its seed alone. Envs reset without a seed (auto-resets) draw one from torch.
* `HandGraspAction` is the 14 hand values of the REAL_G1 command. mjlab's G1 has rigid hands, so as
  in the MuJoCo task a hand is closed when the mean of its 7 values exceeds 0.5, closing it with the
  palm within 6 cm of the apple attaches the apple to the wrist at their relative pose, and opening
  it releases the apple. MuJoCo does this with a weld constraint; here the attached apple's pose
  and velocity are written from the wrist's before every physics step (a kinematic carry).
* `apple_on_plate`: released, centre within the plate's rim, at resting height, nearly still.

Quaternions are Isaac Lab 3.0's (x, y, z, w).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from isaaclab.managers import ActionTerm, ActionTermCfg, ManagerTermBase, SceneEntityCfg
from isaaclab.utils import configclass
from isaaclab.utils.math import combine_frame_transforms, quat_apply, subtract_frame_transforms
from rolloutq.sim_workers.tasks.g1_pickplace import layout
from rolloutq.sim_workers.tasks.g1_pickplace.layout import (
    APPLE_RADIUS,
    GRASP_RADIUS,
    HAND_CLOSED,
    PLATE_HALF_HEIGHT,
    PLATE_RADIUS,
    TABLE_TOP,
)

if TYPE_CHECKING:
    from isaaclab.envs import ManagerBasedEnv, ManagerBasedRLEnv

SIDES = ("left", "right")
WRIST_BODIES = tuple(f"{s}_wrist_yaw_link" for s in SIDES)
PALM_OFFSET = (0.08, 0.0, 0.0)
"""The MJCF's `<side>_palm` site in its wrist_yaw_link frame (the converter does not carry sites)."""
HAND_TERM = "hands"


def sample_layout(seed: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """World xy of apple and plate for `seed`: the MuJoCo task's rule (`g1_pickplace.layout`)."""
    apple, plate = layout.sample_layout(int(seed))
    return (float(apple[0]), float(apple[1])), (float(plate[0]), float(plate[1]))


def _t(x: object) -> torch.Tensor:
    """Isaac Lab 3.0 data properties are warp-backed proxies; `.torch` is the tensor view."""
    return x.torch if hasattr(x, "torch") else x  # type: ignore[return-value]


# --- reset --------------------------------------------------------------------------------------------


class SeededLayout(ManagerTermBase):
    """Reset event: apple and plate where the episode's seed puts them (see `set_seeds`)."""

    def __init__(self, cfg, env: ManagerBasedEnv) -> None:  # noqa: ANN001 - Isaac Lab's term signature
        super().__init__(cfg, env)
        self.seeds = torch.zeros(env.num_envs, dtype=torch.int64)
        self.pending = torch.zeros(env.num_envs, dtype=torch.bool)
        self.apple = env.scene[cfg.params.get("apple", "apple")]
        self.plate = env.scene[cfg.params.get("plate", "plate")]

    def set_seeds(self, env_ids: Sequence[int], seeds: Sequence[int]) -> None:
        """Seeds for the next reset of these envs."""
        ids = torch.as_tensor(list(env_ids), dtype=torch.int64)
        self.seeds[ids] = torch.as_tensor(list(seeds), dtype=torch.int64)
        self.pending[ids] = True

    def __call__(self, env: ManagerBasedEnv, env_ids: torch.Tensor | slice | None, apple: str = "apple",
                 plate: str = "plate") -> None:
        every = torch.arange(env.num_envs)
        ids = every if env_ids is None else every[env_ids] if isinstance(env_ids, slice) else \
            torch.as_tensor(env_ids).to("cpu", torch.int64)
        fresh = ids[~self.pending[ids]]
        self.seeds[fresh] = torch.randint(0, 2**31 - 1, (len(fresh),), dtype=torch.int64)
        self.pending[ids] = False
        xy = torch.tensor([[*a, *p] for a, p in (sample_layout(int(self.seeds[i])) for i in ids)],
                          dtype=torch.float32).reshape(-1, 4)
        origins = env.scene.env_origins[ids.to(env.device)]
        unit = torch.tensor([0.0, 0.0, 0.0, 1.0], device=env.device).repeat(len(ids), 1)
        zeros = torch.zeros(len(ids), 6, device=env.device)
        for asset, cols, z in ((self.apple, [0, 1], TABLE_TOP + APPLE_RADIUS),
                               (self.plate, [2, 3], TABLE_TOP + PLATE_HALF_HEIGHT)):
            pos = torch.cat([xy[:, cols].to(env.device), torch.full((len(ids), 1), z, device=env.device)], 1)
            pose = torch.cat([pos + origins, unit], 1)
            asset.write_root_pose_to_sim_index(root_pose=pose, env_ids=ids.to(env.device))
            asset.write_root_velocity_to_sim_index(root_velocity=zeros, env_ids=ids.to(env.device))


# --- hands ----------------------------------------------------------------------------------------------


class HandGraspAction(ActionTerm):
    """The 14 hand values (left 7, right 7): clipped to [0, 1], reported as the hand state; a closed
    hand near the apple carries it."""

    cfg: HandGraspActionCfg

    def __init__(self, cfg: HandGraspActionCfg, env: ManagerBasedEnv) -> None:
        super().__init__(cfg, env)
        self._object = env.scene[cfg.object_name]
        self._wrists = [self._asset.body_names.index(b) for b in cfg.wrist_bodies]
        n = self.num_envs
        self._raw = torch.zeros(n, 14, device=self.device)
        self._hands = torch.zeros(n, 14, device=self.device)
        self.attached = torch.full((n,), -1, dtype=torch.int64, device=self.device)
        """Per env: the index into `SIDES` of the hand holding the apple, or -1."""
        self._rel_pos = torch.zeros(n, 3, device=self.device)
        self._rel_quat = torch.zeros(n, 4, device=self.device)
        self._palm = torch.tensor(cfg.palm_offset, device=self.device)

    @property
    def action_dim(self) -> int:
        return 14

    @property
    def raw_actions(self) -> torch.Tensor:
        return self._raw

    @property
    def processed_actions(self) -> torch.Tensor:
        return self._hands

    def wrist_poses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 2, 3) positions and (N, 2, 4) quaternions of the two wrist_yaw_links, world frame."""
        data = self._asset.data
        return _t(data.body_link_pos_w)[:, self._wrists], _t(data.body_link_quat_w)[:, self._wrists]

    def palm_positions(self) -> torch.Tensor:
        """(N, 2, 3) palm positions (the MJCF's palm sites), world frame."""
        pos, quat = self.wrist_poses()
        return pos + quat_apply(quat, self._palm.expand_as(pos))

    def process_actions(self, actions: torch.Tensor) -> None:
        self._raw[:] = actions
        self._hands[:] = actions.clamp(0.0, 1.0)
        closed = self._hands.view(-1, 2, 7).mean(-1) > self.cfg.closed_threshold  # (N, 2)
        holding = self.attached >= 0
        release = holding & ~closed.gather(1, self.attached.clamp(min=0)[:, None])[:, 0]
        self.attached[release] = -1
        free = self.attached < 0
        if not bool((free & closed.any(1)).any()):
            return
        apple = _t(self._object.data.root_link_pos_w)
        near = (self.palm_positions() - apple[:, None]).norm(dim=-1) < self.cfg.grasp_radius  # (N, 2)
        grab = closed & near & free[:, None]
        side = torch.where(grab[:, 1], 1, torch.where(grab[:, 0], 0, -1))  # the right hand first, as in MuJoCo
        ids = (side >= 0).nonzero()[:, 0]
        if len(ids) == 0:
            return
        w_pos, w_quat = self.wrist_poses()
        s = side[ids]
        a_quat = _t(self._object.data.root_link_quat_w)[ids]
        self._rel_pos[ids], self._rel_quat[ids] = subtract_frame_transforms(
            w_pos[ids, s], w_quat[ids, s], apple[ids], a_quat)
        self.attached[ids] = s

    def apply_actions(self) -> None:
        ids = (self.attached >= 0).nonzero()[:, 0]
        if len(ids) == 0:
            return
        s = self.attached[ids]
        w_pos, w_quat = self.wrist_poses()
        w_pos, w_quat = w_pos[ids, s], w_quat[ids, s]
        pos, quat = combine_frame_transforms(w_pos, w_quat, self._rel_pos[ids], self._rel_quat[ids])
        data = self._asset.data
        lin = _t(data.body_link_lin_vel_w)[:, self._wrists][ids, s]
        ang = _t(data.body_link_ang_vel_w)[:, self._wrists][ids, s]
        vel = torch.cat([lin + torch.cross(ang, pos - w_pos, dim=-1), ang], 1)
        self._object.write_root_pose_to_sim_index(root_pose=torch.cat([pos, quat], 1), env_ids=ids)
        self._object.write_root_velocity_to_sim_index(root_velocity=vel, env_ids=ids)

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        ids = slice(None) if env_ids is None else env_ids
        self._raw[ids] = 0.0
        self._hands[ids] = 0.0
        self.attached[ids] = -1


@configclass
class HandGraspActionCfg(ActionTermCfg):
    class_type: type[ActionTerm] = HandGraspAction
    object_name: str = "apple"
    wrist_bodies: tuple[str, str] = WRIST_BODIES
    palm_offset: tuple[float, float, float] = PALM_OFFSET
    grasp_radius: float = GRASP_RADIUS
    closed_threshold: float = HAND_CLOSED


# --- observations and terminations ----------------------------------------------------------------------


def hand_state(env: ManagerBasedEnv) -> torch.Tensor:
    """(N, 14) the last hand command clipped to [0, 1] (left 7, right 7)."""
    return env.action_manager.get_term(HAND_TERM).processed_actions


def object_pose_in_robot_frame(env: ManagerBasedEnv, asset_cfg: SceneEntityCfg,
                               robot_cfg: SceneEntityCfg = SceneEntityCfg("robot")) -> torch.Tensor:
    """(N, 7) an object's pose (xyz, quaternion xyzw) in the robot's root (pelvis) frame."""
    robot, obj = env.scene[robot_cfg.name], env.scene[asset_cfg.name]
    pos, quat = subtract_frame_transforms(_t(robot.data.root_link_pos_w), _t(robot.data.root_link_quat_w),
                                          _t(obj.data.root_link_pos_w), _t(obj.data.root_link_quat_w))
    return torch.cat([pos, quat], 1)


def root_pose_w(env: ManagerBasedEnv, asset_cfg: SceneEntityCfg) -> torch.Tensor:
    """(N, 7) an asset's root pose in the world frame (xyz, quaternion xyzw)."""
    data = env.scene[asset_cfg.name].data
    return torch.cat([_t(data.root_link_pos_w), _t(data.root_link_quat_w)], 1)


def apple_on_plate(env: ManagerBasedRLEnv, apple_cfg: SceneEntityCfg = SceneEntityCfg("apple"),
                   plate_cfg: SceneEntityCfg = SceneEntityCfg("plate"), rim_margin: float = 0.015,
                   height_tol: float = 0.01, max_speed: float = 0.05) -> torch.Tensor:
    """Success: the apple is released, its centre within the plate's rim, at resting height, nearly still."""
    apple, plate = env.scene[apple_cfg.name].data, env.scene[plate_cfg.name].data
    a, p = _t(apple.root_link_pos_w), _t(plate.root_link_pos_w)
    rest_z = TABLE_TOP + 2 * PLATE_HALF_HEIGHT + APPLE_RADIUS
    within = (a[:, :2] - p[:, :2]).norm(dim=-1) < PLATE_RADIUS - rim_margin
    height = (a[:, 2] - env.scene.env_origins[:, 2] - rest_z).abs() < height_tol
    still = _t(apple.root_link_lin_vel_w).norm(dim=-1) < max_speed
    released = env.action_manager.get_term(HAND_TERM).attached < 0
    return within & height & still & released
