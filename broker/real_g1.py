"""The REAL_G1 wire layout (GR00T's Unitree G1 embodiment): key names and widths, in one place.

Simulators (`sim_workers/real_g1.py` translates to and from it) and policy backends (the G1
expert, the visuomotor network, GR00T) all speak this layout; it lives in the broker because it
is part of what crosses the wire, and the two sides never import each other.
"""

from __future__ import annotations

IMAGE_SIZE = 256
FRAMES = 2
CHUNK_LENGTH = 40
ACTION_HORIZON = 8

VIDEO_KEY = "video.ego_view"
TEXT_KEY = "annotation.human.task_description"

# Observation state keys and their widths, in wire order.
STATE_DIMS: dict[str, int] = {
    "state.left_wrist_eef_9d": 9,
    "state.right_wrist_eef_9d": 9,
    "state.left_arm": 7,
    "state.right_arm": 7,
    "state.left_hand": 7,
    "state.right_hand": 7,
    "state.waist": 3,
}

# Action chunk keys and their widths (each (1, CHUNK_LENGTH, D) float32).
ACTION_DIMS: dict[str, int] = {
    "left_wrist_eef_9d": 9,
    "right_wrist_eef_9d": 9,
    "left_hand": 7,
    "right_hand": 7,
    "left_arm": 7,
    "right_arm": 7,
    "waist": 3,
    "base_height_command": 1,
    "navigate_command": 3,
}

# One env step = these chunk keys concatenated in this order -> (1, 28).
ENV_ACTION_KEYS: tuple[str, ...] = ("left_arm", "right_arm", "left_hand", "right_hand")
ENV_ACTION_DIM = sum(ACTION_DIMS[k] for k in ENV_ACTION_KEYS)
