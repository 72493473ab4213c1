"""What a LIBERO env sends the policy and what it takes back, in rolloutq's flat-key wire format.

Observation (leading batch dimension 1, one time step, like the other built-in tasks):

| key | dtype | shape | content |
| --- | --- | --- | --- |
| `video.agentview` | uint8 | (1, 1, H, W, 3) | the third-person camera, rotated 180 degrees |
| `video.wrist` | uint8 | (1, 1, H, W, 3) | the eye-in-hand camera, rotated 180 degrees |
| `state.eef_pos` | float32 | (1, 1, 3) | end-effector position (m, world frame) |
| `state.eef_axis_angle` | float32 | (1, 1, 3) | end-effector orientation, axis-angle |
| `state.gripper_qpos` | float32 | (1, 1, 2) | the two finger joints |
| `state.joint_pos` | float32 | (1, 1, 7) | the Panda's arm joints (rad) |
| `annotation.human.task_description` | text | (1, 1) | the task's instruction |

`state.eef_pos` + `state.eef_axis_angle` + `state.gripper_qpos` is the 8-D proprio state LIBERO
policies (OpenVLA-OFT, pi0, GR00T) are trained on. Action chunk: `action` float32 (1, T, 7),
delta position, delta axis-angle, gripper (< 0 open, >= 0 close).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rolloutq.sim_workers.tasks.libero.protocol import ACTION_DIM, binarize_gripper, quat_to_axis_angle, rotate_180

AGENTVIEW_KEY = "video.agentview"
WRIST_KEY = "video.wrist"
TEXT_KEY = "annotation.human.task_description"
ACTION_KEY = "action"
STATE_DIMS = {"state.eef_pos": 3, "state.eef_axis_angle": 3, "state.gripper_qpos": 2, "state.joint_pos": 7}
CAMERAS = {AGENTVIEW_KEY: "agentview_image", WRIST_KEY: "robot0_eye_in_hand_image"}
"""Wire key -> robosuite observation name."""

LAYOUT: dict[str, Any] = {
    "image_key": AGENTVIEW_KEY,
    "image_shape": [1, 1, 256, 256, 3],
    "state_dims": dict(STATE_DIMS),
    "action_dims": {ACTION_KEY: ACTION_DIM},
    "text_key": TEXT_KEY,
}
"""For the generic backends (`null`, `fixed-cost`, `cnn`): `rolloutq.controller.eval` reads it from the
adapter class to shape their schemas to this task."""


def observation_schema(image_size: int = 256) -> dict[str, dict[str, Any]]:
    """The observation schema in the `PolicyMetadata` format (for policies written for this task)."""
    schema: dict[str, dict[str, Any]] = {k: {"dtype": "uint8", "shape": [1, 1, image_size, image_size, 3]}
                                         for k in CAMERAS}
    schema.update({k: {"dtype": "float32", "shape": [1, 1, d]} for k, d in STATE_DIMS.items()})
    schema[TEXT_KEY] = {"kind": "text"}
    return schema


def action_schema(chunk_length: int) -> dict[str, dict[str, Any]]:
    return {ACTION_KEY: {"dtype": "float32", "shape": [1, chunk_length, ACTION_DIM]}}


def build_observation(raw: dict[str, Any], instruction: str) -> dict[str, Any]:
    """A robosuite observation dict (with both camera images) in the wire schema above."""
    obs: dict[str, Any] = {key: rotate_180(raw[name])[None, None] for key, name in CAMERAS.items()}
    values = {
        "state.eef_pos": raw["robot0_eef_pos"],
        "state.eef_axis_angle": quat_to_axis_angle(raw["robot0_eef_quat"]),
        "state.gripper_qpos": raw["robot0_gripper_qpos"],
        "state.joint_pos": raw["robot0_joint_pos"],
    }
    for key, dim in STATE_DIMS.items():
        obs[key] = np.asarray(values[key], np.float32).reshape(1, 1, dim)
    obs[TEXT_KEY] = [[instruction]]
    return obs


def action_from_chunk(chunk: dict[str, np.ndarray], t: int) -> np.ndarray:
    """Step `t` of the chunk's `action` (1, T, 7) as the env's 7-D action, gripper binarised."""
    a = chunk.get(ACTION_KEY)
    if a is None:
        raise KeyError(f"the action chunk has no {ACTION_KEY!r} key (keys: {sorted(chunk)[:8]}); a LIBERO policy "
                       f"answers {ACTION_KEY!r} of shape (1, T, {ACTION_DIM})")
    a = np.asarray(a)
    if a.ndim != 3 or a.shape[0] != 1 or a.shape[2] != ACTION_DIM:
        raise ValueError(f"the chunk's {ACTION_KEY!r} has shape {a.shape}; LIBERO needs (1, T, {ACTION_DIM})")
    return binarize_gripper(a[0, t])
