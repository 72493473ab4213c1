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

`scene.py` builds the MuJoCo model; `adapter.py` runs episodes on it.
"""

from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["Adapter", "observation_schema"]


def _choose_gl() -> None:
    """Offscreen rendering on the CPU: EGL (llvmpipe) when it works, else OSMesa.

    MuJoCo picks its GL backend when it is first imported, so this runs before that import and
    only when MUJOCO_GL is unset.
    """
    if "MUJOCO_GL" in os.environ or "mujoco" in sys.modules:
        return
    probe = "import mujoco; mujoco.Renderer(mujoco.MjModel.from_xml_string('<mujoco/>'), 8, 8).close()"
    for backend in ("egl", "osmesa"):
        env = dict(os.environ, MUJOCO_GL=backend)
        ok = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=60)
        if ok.returncode == 0:
            os.environ["MUJOCO_GL"] = backend
            return


_choose_gl()  # before the task's modules import mujoco
from rolloutq.sim_workers.tasks.g1_pickplace.adapter import Adapter, observation_schema  # noqa: E402
