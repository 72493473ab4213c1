"""Unitree G1 pick-and-place in MuJoCo on the CPU: "pick up the apple and place it on the plate".

The reference design runs this scene in Isaac Lab; here it is rebuilt in MuJoCo so that the whole
pipeline (REAL_G1 schema, codec, batching, translation) runs on any machine. Simplifications:

* The G1 model (mjlab's asset zoo) is fixed at the pelvis: no free joint, legs and waist rigid.
  Only the 14 arm joints move, through position actuators with gravity compensation.
* Its hands are rigid ("rubber" hands, no finger joints). A hand counts as closed when the mean of
  its 7 commanded hand values exceeds 0.5; closing a hand whose palm is within 6 cm of the apple
  attaches the apple to the wrist with a weld constraint, opening it releases the apple. The
  reported hand state is the last hand command, clipped to [0, 1].
* The robot's own geoms do not collide with anything; the apple collides with the table and
  the plate.

Success: the apple rests on the plate (released, centre within the plate's rim, at resting
height, nearly still). Episodes end on success, when the apple falls off the table, or at the
step cap.

`layout.py` holds the task's numbers and rules that need no simulator (dimensions, rest pose, seeds
→ layouts; the Isaac Lab version of the task shares them), `scene.py` builds the MuJoCo model and
`adapter.py` runs episodes on it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Adapter", "observation_schema"]


def __getattr__(name: str) -> Any:
    """`Adapter` and `observation_schema`, imported on first use (importing them loads MuJoCo)."""
    if name in __all__:
        from rolloutq.sim_workers.tasks.g1_pickplace import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
