"""`g1-isaaclab`: the g1-pickplace task ("pick up the apple and place it on the plate") in Isaac Lab 3.0.

The same scene, seeds, rules and REAL_G1 wire schema as the MuJoCo task (`tasks/g1_pickplace/`), as an
Isaac Lab manager-based environment (`env_cfg.py`, gym id `Rolloutq-G1-PickPlace-v0`, with the task's
own terms in `mdp.py`), run kit-less: Newton physics on MuJoCo-Warp and Newton's Warp renderer, on
the CPU. It runs from the Isaac Lab venv (`scripts/install_isaaclab.sh`) once the robot has been
converted to USD (`scripts/make_g1_usd.py`). What differs from the MuJoCo task is in docs/TASKS.md.

Importing this package imports no Isaac Lab module; building an env does.
"""

from rolloutq.sim_workers.tasks.g1_isaaclab.adapter import Adapter, VectorAdapter, observation_schema

__all__ = ["Adapter", "VectorAdapter", "observation_schema"]
