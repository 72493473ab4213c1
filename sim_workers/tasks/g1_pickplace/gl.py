"""Offscreen rendering on the CPU for the MuJoCo task: choose MuJoCo's GL backend before mujoco is imported.

Imported first by `scene.py` and `adapter.py`, so choosing happens only when the MuJoCo task is used
(not when another task reads `layout.py`).
"""

from __future__ import annotations

import os
import subprocess
import sys


def choose_gl() -> None:
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


choose_gl()
