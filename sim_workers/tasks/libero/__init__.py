"""`libero`: the LIBERO benchmark (Spatial, Object, Goal, LIBERO-10, LIBERO-90) as a built-in task.

`rolloutq eval --task libero --task-option suite=libero_spatial` runs the standard protocol
(`protocol`), sends both cameras and the proprio state (`schema`), and hosts many envs in one
simulator process (`adapter.VectorAdapter`). LIBERO itself is imported only when an env is built
(`env`); `Adapter.episode_group` names an episode's task for the run's per-task table. See docs/TASKS.md.
"""

from rolloutq.sim_workers.tasks.libero.adapter import Adapter, VectorAdapter

__all__ = ["Adapter", "VectorAdapter"]
