"""The standard LIBERO evaluation protocol, as numbers and pure functions (no simulator needed).

These are the conventions every LIBERO result in the VLA literature follows (the OpenVLA / openpi
example scripts and vla-eval 0.8.0's `vla_eval/benchmarks/libero/benchmark.py` agree on them), kept
in one place so the adapter, its tests and the equivalence test against vla-eval read the same
values:

- 50 fixed initial states per task, shipped with the benchmark (`get_task_init_states`); an
  episode restores one of them after `env.reset()`;
- 10 settle steps with a no-op, gripper-open action before the policy is first asked (objects
  drop onto the table); they do not count toward the step limit;
- a per-suite step limit on the policy's steps;
- camera images rotated by 180 degrees (robosuite renders them upside down and mirrored);
- the policy's gripper command binarised: < 0 opens (-1), >= 0 closes (+1).

Which (task, initial state) an episode runs is a function of its seed only, so outcomes never
depend on which simulator, env slot or batch ran it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")

MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
"""Policy steps per episode (after the settle steps), as in vla-eval's MAX_STEP_MAPPING and the
OpenVLA LIBERO evaluation script."""

TASKS_PER_SUITE = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}

INIT_STATES_PER_TASK = 50
"""Each standard task ships 50 initial states; the standard run is 50 episodes per task."""

SETTLE_STEPS = 10
SETTLE_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
"""No motion, gripper open: what the settle steps execute."""

ENV_SEED = 7
"""`env.seed()` before each reset (vla-eval's default seed). The restored initial state overrides
the random object placement, so this only pins the RNG for anything else that might draw."""

CONTROL_FREQ = 20.0
"""Env steps per second of simulated time (LIBERO's environments run their controller at 20 Hz):
the frame rate of the run's videos."""

ACTION_DIM = 7
"""End-effector delta position (3), delta axis-angle rotation (3), gripper (1): the OSC_POSE
controller LIBERO's environments use."""

ORDERS = ("interleaved", "task-major")


@dataclass(frozen=True)
class EpisodeSlot:
    """Which task and which of its initial states an episode runs."""

    task_id: int
    init_index: int


def episode_slot(seed: int, task_ids: tuple[int, ...], order: str = "interleaved") -> EpisodeSlot:
    """The (task, initial state) of the episode with this seed.

    `interleaved` (default): consecutive seeds visit the tasks in turn (seed 0 -> task 0 state 0,
    seed 1 -> task 1 state 0, ...), so any prefix of a run covers every task evenly and a short run
    still gives a per-task table. `task-major`: seeds 0-49 are task 0's 50 states, 50-99 task 1's,
    ... (vla-eval's episode order). Either way seeds 0 .. 50 * len(task_ids) - 1 run every
    (task, state) pair exactly once, and larger seeds wrap around.
    """
    if not task_ids:
        raise ValueError("no LIBERO tasks selected")
    n = len(task_ids)
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"LIBERO episode seeds must be >= 0, got {seed}")
    if order == "interleaved":
        return EpisodeSlot(task_ids[seed % n], (seed // n) % INIT_STATES_PER_TASK)
    if order == "task-major":
        return EpisodeSlot(task_ids[(seed // INIT_STATES_PER_TASK) % n], seed % INIT_STATES_PER_TASK)
    raise ValueError(f"unknown episode order {order!r}; use one of {', '.join(ORDERS)}")


def rotate_180(image: np.ndarray) -> np.ndarray:
    """A robosuite camera image the right way up (both axes flipped, as vla-eval and openpi do)."""
    return np.ascontiguousarray(image[::-1, ::-1])


def binarize_gripper(action: np.ndarray) -> np.ndarray:
    """The 7-D action with its gripper value snapped to -1 (open, value < 0) or +1 (close)."""
    out = np.asarray(action, np.float64).reshape(ACTION_DIM).copy()
    out[-1] = -1.0 if out[-1] < 0 else 1.0
    return out


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """robosuite's (x, y, z, w) quaternion as an axis-angle 3-vector, the state convention of the
    LIBERO policies (the same formula as robosuite's `quat2axisangle`: w clipped to [-1, 1], no sign
    normalisation, zero for the identity)."""
    q = np.asarray(quat_xyzw, np.float64)
    w = float(np.clip(q[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if np.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * np.arccos(w) / den
