"""The g1-pickplace task on the scene of `scene.py`: an episode's layout from its seed, the arms
driven by REAL_G1 joint commands, grasping by weld, the REAL_G1 observation, and success.
"""

from __future__ import annotations

from rolloutq.sim_workers.tasks.g1_pickplace import gl  # noqa: F401  (before mujoco)

# isort: split

import mujoco
import numpy as np
from rolloutq.sim_workers import real_g1
from rolloutq.sim_workers.base import Obs, SimAdapter, StepResult, TaskInfo
from rolloutq.sim_workers.tasks.g1_pickplace.layout import (
    APPLE_RADIUS,
    ARM_JOINTS,
    CONTROL_DT,
    GRASP_RADIUS,
    HAND_CLOSED,
    MAX_STEPS,
    PHYSICS_DT,
    PLATE_HALF_HEIGHT,
    PLATE_RADIUS,
    REST_ARM,
    TABLE_TOP,
    observation_schema,
    sample_layout,
)
from rolloutq.sim_workers.tasks.g1_pickplace.scene import build_model

__all__ = ["Adapter", "observation_schema"]

IMAGE = real_g1.IMAGE_SIZE


class Adapter(SimAdapter):
    """G1 pick-and-place. Options: `privileged` adds `privileged.object_poses` (sim-only, not
    REAL_G1) for the scripted expert; `render` False replaces the camera with black frames
    (for physics-only benchmarks); `max_steps` sets the step cap."""

    def __init__(self, privileged: bool = False, render: bool = True, max_steps: int = MAX_STEPS) -> None:
        self.privileged = privileged
        self.render_enabled = render
        self.model = build_model()
        self.data = mujoco.MjData(self.model)
        self.n_substeps = round(CONTROL_DT / PHYSICS_DT)
        m = self.model
        self.arm_qpos = {
            s: np.array([m.jnt_qposadr[m.joint(n).id] for n in ARM_JOINTS[s]]) for s in ARM_JOINTS
        }
        self.arm_ctrl = {
            s: np.array([m.actuator(n.replace("_joint", "")).id for n in ARM_JOINTS[s]]) for s in ARM_JOINTS
        }
        self.ctrl_low, self.ctrl_high = m.actuator_ctrlrange[:, 0].copy(), m.actuator_ctrlrange[:, 1].copy()
        self.palm_site = {s: m.site(f"{s}_palm").id for s in ("left", "right")}
        self.hand_body = {s: m.body(f"{s}_wrist_yaw_link").id for s in ("left", "right")}
        self.grasp_eq = {s: m.equality(f"{s}_grasp").id for s in ("left", "right")}
        self.apple_body = m.body("apple").id
        self.apple_qpos = m.jnt_qposadr[m.joint("apple_free").id]
        self.apple_qvel = m.jnt_dofadr[m.joint("apple_free").id]
        self.plate_mocap = m.body_mocapid[m.body("plate").id]
        self.pelvis_body = m.body("pelvis").id
        self.camera = m.camera("ego_view").id
        self.info = TaskInfo(
            name="g1-pickplace",
            instruction=real_g1.INSTRUCTION,
            max_steps=max_steps,
            fps=1.0 / CONTROL_DT,
            description=(
                "Unitree G1 (mjlab asset, pelvis fixed, legs/waist rigid, 14 arm joints under position "
                "control) at a table; apple and plate positions drawn from the seed. The G1 hands are "
                "rigid: closing a hand (mean of its 7 commands > 0.5) within 6 cm of the apple welds the "
                "apple to the wrist, opening releases it. Robot geoms do not collide. Success: apple "
                f"released and resting on the plate. {CONTROL_DT * 1000:.0f} ms per env step, cap "
                f"{max_steps} steps."
            ),
        )
        self._renderer: mujoco.Renderer | None = None
        self._prev_frame: np.ndarray | None = None
        self._frame: np.ndarray | None = None
        self.reset(0)

    # --- episode -------------------------------------------------------------------------------

    def sample_layout(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return sample_layout(seed)

    def reset(self, seed: int) -> None:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        apple_xy, plate_xy = self.sample_layout(int(seed))
        for side in ("left", "right"):
            d.qpos[self.arm_qpos[side]] = REST_ARM[side]
            d.ctrl[self.arm_ctrl[side]] = REST_ARM[side]
            d.eq_active[self.grasp_eq[side]] = 0
        d.qpos[self.apple_qpos : self.apple_qpos + 3] = [apple_xy[0], apple_xy[1], TABLE_TOP + APPLE_RADIUS]
        d.qpos[self.apple_qpos + 3 : self.apple_qpos + 7] = [1, 0, 0, 0]
        d.mocap_pos[self.plate_mocap] = [plate_xy[0], plate_xy[1], TABLE_TOP + PLATE_HALF_HEIGHT]
        mujoco.mj_forward(m, d)
        self.hand_cmd = {"left": np.zeros(7), "right": np.zeros(7)}
        self.attached: str | None = None
        self.steps = 0
        self.success = False
        self._prev_frame = None
        self._frame = None

    def step(self, action: np.ndarray) -> StepResult:
        m, d = self.model, self.data
        parts = real_g1.split_env_action(action)
        if not np.all(np.isfinite(action)):
            raise ValueError("non-finite env action")
        for side in ("left", "right"):
            idx = self.arm_ctrl[side]
            d.ctrl[idx] = np.clip(parts[f"{side}_arm"], self.ctrl_low[idx], self.ctrl_high[idx])
            self.hand_cmd[side] = np.clip(parts[f"{side}_hand"], 0.0, 1.0)
        self._update_grasp()
        mujoco.mj_step(m, d, nstep=self.n_substeps)
        self.steps += 1
        apple = d.xpos[self.apple_body]
        self.success = self._on_plate()
        fell = apple[2] < TABLE_TOP - 0.1
        done = self.success or fell or self.steps >= self.info.max_steps
        info = {"steps": self.steps, "attached": self.attached, "fell": bool(fell)}
        return StepResult(reward=float(self.success), done=bool(done), success=bool(self.success), info=info)

    def _update_grasp(self) -> None:
        d = self.data
        closed = {s: float(self.hand_cmd[s].mean()) > HAND_CLOSED for s in ("left", "right")}
        if self.attached is not None and not closed[self.attached]:
            d.eq_active[self.grasp_eq[self.attached]] = 0
            self.attached = None
        if self.attached is None:
            apple = d.xpos[self.apple_body]
            for side in ("right", "left"):
                palm = d.site_xpos[self.palm_site[side]]
                if closed[side] and np.linalg.norm(palm - apple) < GRASP_RADIUS:
                    self._attach(side)
                    break

    def _attach(self, side: str) -> None:
        m, d = self.model, self.data
        hb, ab = self.hand_body[side], self.apple_body
        r_h = d.xmat[hb].reshape(3, 3)
        rel_pos = r_h.T @ (d.xpos[ab] - d.xpos[hb])
        q_h_inv = np.zeros(4)
        mujoco.mju_negQuat(q_h_inv, d.xquat[hb])
        rel_quat = np.zeros(4)
        mujoco.mju_mulQuat(rel_quat, q_h_inv, d.xquat[ab])
        eq = self.grasp_eq[side]
        m.eq_data[eq, 0:3] = 0.0
        m.eq_data[eq, 3:6] = rel_pos
        m.eq_data[eq, 6:10] = rel_quat
        m.eq_data[eq, 10] = 1.0
        d.eq_active[eq] = 1
        self.attached = side

    def _on_plate(self) -> bool:
        d = self.data
        if self.attached is not None:
            return False
        apple = d.xpos[self.apple_body]
        plate = d.mocap_pos[self.plate_mocap]
        rest_z = TABLE_TOP + 2 * PLATE_HALF_HEIGHT + APPLE_RADIUS
        within = np.linalg.norm(apple[:2] - plate[:2]) < PLATE_RADIUS - 0.015
        height = abs(apple[2] - rest_z) < 0.01
        still = np.linalg.norm(d.qvel[self.apple_qvel : self.apple_qvel + 3]) < 0.05
        return bool(within and height and still)

    # --- observation ---------------------------------------------------------------------------

    def _render(self) -> np.ndarray:
        if not self.render_enabled:
            return np.zeros((IMAGE, IMAGE, 3), np.uint8)
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, IMAGE, IMAGE)
            except Exception as e:
                raise RuntimeError(
                    "offscreen rendering failed: MuJoCo picks its GL backend when first imported; set "
                    "MUJOCO_GL=egl (or osmesa) before anything imports mujoco"
                ) from e
        self._renderer.update_scene(self.data, camera=self.camera)
        return self._renderer.render().copy()

    def _pelvis_frame(self, pos: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r_p = self.data.xmat[self.pelvis_body].reshape(3, 3)
        return r_p.T @ (pos - self.data.xpos[self.pelvis_body]), r_p.T @ rot

    def eef_9d(self, side: str) -> np.ndarray:
        """Palm site pose in the pelvis frame, 9-D encoded."""
        sid = self.palm_site[side]
        pos, rot = self._pelvis_frame(self.data.site_xpos[sid], self.data.site_xmat[sid].reshape(3, 3))
        return real_g1.pose_to_9d(pos, rot)

    def object_poses(self) -> np.ndarray:
        """(1, 2, 7) float32: apple and plate pose (xyz + wxyz quaternion) in the pelvis frame."""
        d = self.data
        out = np.zeros((1, 2, 7), np.float32)
        for i, (pos, quat) in enumerate(
            [
                (d.xpos[self.apple_body], d.xquat[self.apple_body]),
                (d.mocap_pos[self.plate_mocap], d.mocap_quat[self.plate_mocap]),
            ]
        ):
            p, _ = self._pelvis_frame(pos, np.eye(3))
            out[0, i, :3] = p
            out[0, i, 3:] = quat
        return out

    def observe(self) -> Obs:
        frame = self._render()
        prev = self._frame if self._frame is not None else frame
        self._prev_frame, self._frame = prev, frame
        d = self.data
        obs = real_g1.build_observation(
            np.stack([prev, frame]),
            left_eef=self.eef_9d("left"),
            right_eef=self.eef_9d("right"),
            left_arm=d.qpos[self.arm_qpos["left"]],
            right_arm=d.qpos[self.arm_qpos["right"]],
            left_hand=self.hand_cmd["left"],
            right_hand=self.hand_cmd["right"],
            waist=np.zeros(3),
        )
        if self.privileged:
            obs["privileged.object_poses"] = self.object_poses()
        return obs

    def action_from_chunk(self, chunk: dict[str, np.ndarray], t: int) -> np.ndarray:
        return real_g1.chunk_step_to_env_action(chunk, t)

    def frame(self) -> np.ndarray | None:
        return self._frame

    def video_state(self) -> tuple[np.ndarray, ...]:
        d = self.data
        return d.qpos.copy(), d.mocap_pos.copy(), d.mocap_quat.copy()

    def video_frame(self, state: tuple[np.ndarray, ...]) -> np.ndarray:
        d = self.data
        d.qpos[:], d.mocap_pos[:], d.mocap_quat[:] = state
        mujoco.mj_forward(self.model, d)
        return self._render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
