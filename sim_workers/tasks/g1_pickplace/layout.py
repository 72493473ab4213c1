"""The g1-pickplace task's numbers and rules that need no simulator: the scene's dimensions, the arms'
rest pose, the spawn region and the seed → layout rule, the grasp and control constants, and the
observation schema. The MuJoCo task (`scene.py`, `adapter.py`) and its Isaac Lab version
(`tasks/g1_isaaclab/`) both read them, so the same seed gives the same layout in both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rolloutq.sim_workers import real_g1

ARM_JOINTS = {
    side: [
        f"{side}_shoulder_pitch_joint",
        f"{side}_shoulder_roll_joint",
        f"{side}_shoulder_yaw_joint",
        f"{side}_elbow_joint",
        f"{side}_wrist_roll_joint",
        f"{side}_wrist_pitch_joint",
        f"{side}_wrist_yaw_joint",
    ]
    for side in ("left", "right")
}
PELVIS_POS = np.array([0.0, 0.0, 0.793])
TABLE_TOP = 0.78
TABLE_CENTER = np.array([0.42, -0.10])
TABLE_HALF = np.array([0.28, 0.45])
APPLE_RADIUS = 0.035
PLATE_RADIUS = 0.085
PLATE_HALF_HEIGHT = 0.006
PHYSICS_DT = 0.004
CAMERA_PITCH = np.deg2rad(62.0)

# Rest pose: palms about 9 cm above the table's front edge.
REST_ARM = {
    "left": np.array([0.2, 0.4, 0.0, 0.4, 0.0, -1.0, 0.0]),
    "right": np.array([0.2, -0.4, 0.0, 0.4, 0.0, -1.0, 0.0]),
}
# Spawn region (world xy) and minimum apple-plate distance.
SPAWN_LOW = np.array([0.22, -0.30])
SPAWN_HIGH = np.array([0.33, 0.04])
MIN_SEPARATION = 0.17
GRASP_RADIUS = 0.06
HAND_CLOSED = 0.5
CONTROL_DT = 0.04
MAX_STEPS = 300
IMAGE = real_g1.IMAGE_SIZE


def sample_layout(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """World xy of the apple and the plate for `seed` (rejection sampling, deterministic)."""
    rng = np.random.default_rng(int(seed))
    while True:
        apple = rng.uniform(SPAWN_LOW, SPAWN_HIGH)
        plate = rng.uniform(SPAWN_LOW, SPAWN_HIGH)
        if np.linalg.norm(apple - plate) >= MIN_SEPARATION:
            return apple, plate


def observation_schema(privileged: bool = False) -> dict[str, dict[str, Any]]:
    schema = real_g1.observation_schema()
    if privileged:
        schema["privileged.object_poses"] = {"dtype": "float32", "shape": [1, 2, 7]}
    return schema
