"""`reach`: a two-link planar arm must touch a red target; seen through a 256x256 top camera.

A small, fast MuJoCo task for the core pipeline and its tests (the G1 pick-and-place scene is the
reference task). Observation: `video.top` uint8 (1, 1, H, W, 3), `state.arm` float32 (1, 1, 2)
joint angles, and the instruction text. Action chunk: `arm` (1, 40, 2) absolute joint targets.
The target is only visible in the image, so a policy must look.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from rolloutq.sim_workers.base import Chunk, Obs, SimAdapter, StepResult, TaskInfo

_XML = """
<mujoco model="reach">
  <option timestep="0.002"/>
  <visual><global offwidth="512" offheight="512"/></visual>
  <worldbody>
    <light pos="0 0 2" dir="0 0 -1" diffuse="0.8 0.8 0.8"/>
    <geom name="table" type="plane" size="0.6 0.6 0.01" rgba="0.85 0.85 0.8 1"/>
    <camera name="top" pos="0 0 1.0" xyaxes="1 0 0 0 1 0" fovy="50"/>
    <body name="link0" pos="0 0 0.02">
      <joint name="j0" type="hinge" axis="0 0 1" damping="0.5"/>
      <geom type="capsule" fromto="0 0 0 0.2 0 0" size="0.015" rgba="0.2 0.3 0.8 1"/>
      <body name="link1" pos="0.2 0 0">
        <joint name="j1" type="hinge" axis="0 0 1" range="-2.8 2.8" damping="0.5"/>
        <geom type="capsule" fromto="0 0 0 0.2 0 0" size="0.012" rgba="0.2 0.6 0.9 1"/>
        <site name="tip" pos="0.2 0 0" size="0.015" rgba="0.1 0.1 0.1 1"/>
      </body>
    </body>
    <body name="target" mocap="true" pos="0.25 0.1 0.02">
      <geom type="sphere" size="0.025" rgba="0.9 0.1 0.1 1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <position joint="j0" kp="20"/>
    <position joint="j1" kp="20"/>
  </actuator>
</mujoco>
"""


class Adapter(SimAdapter):
    layout: dict[str, Any] = {
        "image_key": "video.top",
        "image_shape": [1, 1, 256, 256, 3],
        "state_dims": {"state.arm": 2},
        "action_dims": {"arm": 2},
        "text_key": "annotation.human.task_description",
    }

    def __init__(self, image_size: int = 256, max_steps: int = 150, substeps: int = 10,
                 success_radius: float = 0.03, **_: Any) -> None:
        self.info = TaskInfo(
            name="reach",
            instruction="touch the red ball",
            max_steps=max_steps,
            fps=1.0 / (substeps * 0.002),
            description="two-link planar arm reaching a target seen by a top camera (MuJoCo, CPU)",
        )
        self.image_size = image_size
        self.substeps = substeps
        self.success_radius = success_radius
        self.model = mujoco.MjModel.from_xml_string(_XML)
        self.data = mujoco.MjData(self.model)
        self._renderer: mujoco.Renderer | None = None
        self._frame: np.ndarray | None = None
        self._steps = 0
        self._tip = self.model.site("tip").id

    def reset(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = rng.uniform([-np.pi, -2.0], [np.pi, 2.0])
        self.data.ctrl[:] = self.data.qpos[:2]
        radius, angle = rng.uniform(0.12, 0.36), rng.uniform(-np.pi, np.pi)
        self.data.mocap_pos[0] = [radius * np.cos(angle), radius * np.sin(angle), 0.02]
        mujoco.mj_forward(self.model, self.data)
        self._steps = 0
        self._frame = None

    def _distance(self) -> float:
        return float(np.linalg.norm(self.data.site_xpos[self._tip][:2] - self.data.mocap_pos[0][:2]))

    def observe(self) -> Obs:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
        self._renderer.update_scene(self.data, "top")
        self._frame = self._renderer.render()
        return {
            "video.top": self._frame[None, None].copy(),
            "state.arm": self.data.qpos[:2].astype(np.float32).reshape(1, 1, 2),
            "annotation.human.task_description": [[self.info.instruction]],
        }

    def step(self, action: np.ndarray) -> StepResult:
        self.data.ctrl[:] = np.clip(np.asarray(action, np.float64).reshape(-1)[:2], -np.pi, np.pi)
        for _ in range(self.substeps):
            mujoco.mj_step(self.model, self.data)
        self._steps += 1
        dist = self._distance()
        success = dist < self.success_radius
        done = success or self._steps >= self.info.max_steps
        return StepResult(reward=-dist, done=done, success=success, info={"distance": dist})

    def action_from_chunk(self, chunk: Chunk, t: int) -> np.ndarray:
        return np.asarray(chunk["arm"][0, t], np.float64)

    def frame(self) -> np.ndarray | None:
        return self._frame

    def video_state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.qpos.copy(), self.data.mocap_pos.copy()

    def video_frame(self, state: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        self.data.qpos[:], self.data.mocap_pos[:] = state
        mujoco.mj_forward(self.model, self.data)
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
        self._renderer.update_scene(self.data, "top")
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
