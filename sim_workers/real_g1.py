"""The REAL_G1 observation/action schema and its translations, shared by every G1 adapter.

The reference design drives a Unitree G1 with GR00T's `REAL_G1` embodiment: flat dotted keys,
a leading batch dimension of 1 per observation, 40-step action chunks, and an env that executes
one chunk step as a flat (1, 28) joint command. The MuJoCo task (`tasks/g1_pickplace/`) and a
future Isaac Lab adapter both translate through this module, so the wire format cannot drift
between simulators.

Wrist poses use GR00T's 9-D encoding: xyz followed by the first two ROWS of the 3x3 rotation
matrix (the identity pose encodes as [x, y, z, 1, 0, 0, 0, 1, 0]). The third row is recovered
as the cross product of the first two after Gram-Schmidt.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rolloutq.broker.real_g1 import (  # noqa: F401 - re-exported: the wire layout
    ACTION_DIMS,
    ACTION_HORIZON,
    CHUNK_LENGTH,
    ENV_ACTION_DIM,
    ENV_ACTION_KEYS,
    FRAMES,
    IMAGE_SIZE,
    STATE_DIMS,
    TEXT_KEY,
    VIDEO_KEY,
)

INSTRUCTION = "pick up the apple and place it on the plate"

# --- poses -------------------------------------------------------------------------------------


def pose_to_9d(pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """(3,) position + (3, 3) rotation matrix -> (9,) float32 [xyz, row0, row1]."""
    rot = np.asarray(rot, dtype=np.float64).reshape(3, 3)
    return np.concatenate([np.asarray(pos, dtype=np.float64).reshape(3), rot[0], rot[1]]).astype(np.float32)


def pose_from_9d(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(9,) -> (position (3,), rotation (3, 3)); rows are re-orthonormalised (Gram-Schmidt)."""
    v = np.asarray(v, dtype=np.float64).reshape(9)
    r0 = v[3:6] / np.linalg.norm(v[3:6])
    r1 = v[6:9] - np.dot(v[6:9], r0) * r0
    r1 = r1 / np.linalg.norm(r1)
    r2 = np.cross(r0, r1)
    return v[:3].copy(), np.stack([r0, r1, r2])


# --- schemas in the PolicyMetadata format ------------------------------------------------------


def observation_schema() -> dict[str, dict[str, Any]]:
    schema: dict[str, dict[str, Any]] = {
        VIDEO_KEY: {"dtype": "uint8", "shape": [1, FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3]},
    }
    for key, dim in STATE_DIMS.items():
        schema[key] = {"dtype": "float32", "shape": [1, 1, dim]}
    schema[TEXT_KEY] = {"kind": "text"}
    return schema


def action_schema(chunk_length: int = CHUNK_LENGTH) -> dict[str, dict[str, Any]]:
    return {k: {"dtype": "float32", "shape": [1, chunk_length, d]} for k, d in ACTION_DIMS.items()}


# --- observation builder -----------------------------------------------------------------------


def build_observation(
    frames: np.ndarray,
    *,
    left_eef: np.ndarray,
    right_eef: np.ndarray,
    left_arm: np.ndarray,
    right_arm: np.ndarray,
    left_hand: np.ndarray,
    right_hand: np.ndarray,
    waist: np.ndarray,
    instruction: str = INSTRUCTION,
) -> dict[str, Any]:
    """Assemble one REAL_G1 observation (batch dimension 1).

    `frames` is (2, H, W, 3) uint8, oldest first; `left_eef`/`right_eef` are 9-D poses
    (see `pose_to_9d`); joint vectors are 1-D.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != FRAMES or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 ({FRAMES}, H, W, 3), got {frames.dtype} {frames.shape}")
    values = {
        "state.left_wrist_eef_9d": left_eef,
        "state.right_wrist_eef_9d": right_eef,
        "state.left_arm": left_arm,
        "state.right_arm": right_arm,
        "state.left_hand": left_hand,
        "state.right_hand": right_hand,
        "state.waist": waist,
    }
    obs: dict[str, Any] = {VIDEO_KEY: np.ascontiguousarray(frames[None])}
    for key, dim in STATE_DIMS.items():
        v = np.asarray(values[key], dtype=np.float32).reshape(-1)
        if v.shape[0] != dim:
            raise ValueError(f"{key} needs {dim} values, got {v.shape[0]}")
        obs[key] = v.reshape(1, 1, dim)
    obs[TEXT_KEY] = [[instruction]]
    return obs


def validate_chunk(chunk: dict[str, np.ndarray], keys: tuple[str, ...] = ENV_ACTION_KEYS) -> int:
    """Check that `keys` are present with shape (1, T, D); return T."""
    length = None
    for key in keys:
        if key not in chunk:
            raise KeyError(f"action chunk lacks {key!r}")
        a = np.asarray(chunk[key])
        if a.ndim != 3 or a.shape[0] != 1 or a.shape[2] != ACTION_DIMS[key]:
            raise ValueError(f"{key} must be (1, T, {ACTION_DIMS[key]}), got {a.shape}")
        if length is not None and a.shape[1] != length:
            raise ValueError(f"{key} has {a.shape[1]} steps, others {length}")
        length = a.shape[1]
    assert length is not None
    return length


def chunk_step_to_env_action(chunk: dict[str, np.ndarray], t: int) -> np.ndarray:
    """Step `t` of a chunk -> flat (1, 28) float32: left_arm 7, right_arm 7, left_hand 7, right_hand 7."""
    length = validate_chunk(chunk)
    if not 0 <= t < length:
        raise IndexError(f"step {t} outside a {length}-step chunk")
    return np.concatenate([np.asarray(chunk[k], dtype=np.float32)[0, t] for k in ENV_ACTION_KEYS])[None]


def split_env_action(action: np.ndarray) -> dict[str, np.ndarray]:
    """Flat (1, 28) or (28,) -> {"left_arm": (7,), "right_arm": (7,), "left_hand": ..., "right_hand": ...}."""
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape[0] != ENV_ACTION_DIM:
        raise ValueError(f"env action must have {ENV_ACTION_DIM} values, got {a.shape[0]}")
    out, i = {}, 0
    for key in ENV_ACTION_KEYS:
        d = ACTION_DIMS[key]
        out[key] = a[i : i + d]
        i += d
    return out


def empty_chunk(chunk_length: int = CHUNK_LENGTH) -> dict[str, np.ndarray]:
    """A zero chunk with every REAL_G1 action key."""
    return {k: np.zeros((1, chunk_length, d), np.float32) for k, d in ACTION_DIMS.items()}
