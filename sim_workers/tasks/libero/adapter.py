"""`libero`: the LIBERO benchmark suites as a vectorised rolloutq task (K envs in one process).

A LIBERO env costs ~1.9 GiB and a simulator process (imports, renderer) about as much again, so
one process per env does not scale; `VectorAdapter` holds `num_envs` envs and `run_vector` keeps
one policy request per env in flight, so the policy worker batches them. The envs step one after
the other on the simulator's thread (robosuite has no batched step); envs with no episode running
are not stepped at all.

Options (`--task-option key=value`):
- `suite`: libero_spatial (default), libero_object, libero_goal, libero_10, libero_90;
- `tasks`: task ids to run (default all of the suite), e.g. `tasks=[0,3]` or `tasks=3`;
- `order`: how seeds map to (task, initial state): `interleaved` (default) or `task-major`
  (`rolloutq.sim_workers.tasks.libero.protocol.episode_slot`);
- `max_steps`: the policy's step limit (default: the suite's standard one); reaching it ends the
  episode as a `failure`;
- `image_size` (256), `settle_steps` (10), `env_seed` (7).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rolloutq.sim_workers.base import Chunk, Obs, StepResult, TaskInfo
from rolloutq.sim_workers.tasks.libero import schema
from rolloutq.sim_workers.tasks.libero.env import LiberoEnv, LiberoOptionError, Suite
from rolloutq.sim_workers.tasks.libero.protocol import (
    ACTION_DIM,
    CONTROL_FREQ,
    ENV_SEED,
    MAX_STEPS,
    ORDERS,
    SETTLE_ACTION,
    SETTLE_STEPS,
    TASKS_PER_SUITE,
    EpisodeSlot,
    episode_slot,
    rotate_180,
)
from rolloutq.sim_workers.tasks.libero.schema import observation_schema as observation_schema  # the pre-flight reads it
from rolloutq.sim_workers.vector import SingleEnvView, VectorSimAdapter


def parse_task_ids(tasks: Any, n_tasks: int) -> tuple[int, ...]:
    """`tasks` as given on the command line (None, an int, a list, or "0,3") -> checked task ids."""
    if tasks is None or tasks == "" or tasks == "all":
        return tuple(range(n_tasks))
    if isinstance(tasks, int):
        ids = [tasks]
    elif isinstance(tasks, str):
        ids = [int(x) for x in tasks.replace(" ", "").split(",") if x]
    else:
        ids = [int(x) for x in tasks]
    bad = [i for i in ids if not 0 <= i < n_tasks]
    if bad or not ids or len(set(ids)) != len(ids):
        raise LiberoOptionError(f"tasks={tasks!r}: give distinct task ids between 0 and {n_tasks - 1}")
    return tuple(ids)


class VectorAdapter(VectorSimAdapter):
    """`num_envs` LIBERO envs of one suite in this process."""

    vectorize_by_default = True
    layout: dict[str, Any] = schema.LAYOUT

    @staticmethod
    def episode_group(seed: int, options: dict[str, Any]) -> str:
        """The episode's LIBERO task, for the run's per-task table (known from the seed and the
        run's options alone, without LIBERO installed)."""
        suite = str(options.get("suite", "libero_spatial"))
        ids = parse_task_ids(options.get("tasks"), TASKS_PER_SUITE.get(suite, 10))
        return f"task {episode_slot(seed, ids, str(options.get('order', 'interleaved'))).task_id}"

    def __init__(self, suite: str = "libero_spatial", num_envs: int = 1, tasks: Any = None,
                 order: str = "interleaved", max_steps: int | None = None, image_size: int = 256,
                 settle_steps: int = SETTLE_STEPS, env_seed: int = ENV_SEED, **_: Any) -> None:
        if order not in ORDERS:
            raise LiberoOptionError(f"order={order!r}: use one of {', '.join(ORDERS)}")
        self.suite = Suite(suite)
        self.task_ids = parse_task_ids(tasks, len(self.suite.tasks))
        self.order = order
        self.max_steps = int(max_steps or MAX_STEPS.get(suite, 300))
        self.num_envs = int(num_envs)
        self.envs = [LiberoEnv(self.suite, image_size, settle_steps, env_seed) for _ in range(self.num_envs)]
        self.slots: list[EpisodeSlot | None] = [None] * self.num_envs
        self._steps = np.zeros(self.num_envs, np.int64)
        self._active = np.zeros(self.num_envs, bool)
        self._frames: dict[int, np.ndarray] = {}
        names = [self.suite.tasks[i].instruction for i in self.task_ids]
        self.info = TaskInfo(name=f"libero:{suite}", instruction=names[0] if len(names) == 1 else f"{len(names)} tasks",
                             max_steps=self.max_steps, fps=CONTROL_FREQ,
                             description=f"LIBERO {suite}, tasks {list(self.task_ids)}, {order} order, "
                                         f"{self.max_steps} policy steps after {settle_steps} settle steps")

    def slot_of(self, seed: int) -> EpisodeSlot:
        return episode_slot(seed, self.task_ids, self.order)

    def reset(self, env_ids: list[int], seeds: list[int]) -> None:
        for i, seed in zip(env_ids, seeds, strict=True):
            slot = self.slot_of(seed)
            self.envs[i].reset(slot)
            self.slots[i] = slot
            self._steps[i] = 0
            self._active[i] = True
            self._frames.pop(i, None)

    def observe(self, env_ids: list[int]) -> list[Obs]:
        out = []
        for i in env_ids:
            slot = self.slots[i]
            assert slot is not None, f"env {i} observed before its first reset"
            obs = schema.build_observation(self.envs[i].observe(), self.suite.tasks[slot.task_id].instruction)
            self._frames[i] = obs[schema.AGENTVIEW_KEY][0, 0]
            out.append(obs)
        return out

    def step(self, actions: np.ndarray) -> list[StepResult]:
        actions = np.asarray(actions).reshape(self.num_envs, ACTION_DIM)
        results = []
        for i in range(self.num_envs):
            if not self._active[i]:  # no episode here: nothing to simulate
                results.append(StepResult(reward=0.0, done=False, success=False))
                continue
            reward, success = self.envs[i].step(actions[i])
            self._steps[i] += 1
            capped = self._steps[i] >= self.max_steps
            done = success or capped
            if done:
                self._active[i] = False
            results.append(StepResult(reward=reward, done=done, success=success,
                                      info={"capped": bool(capped and not success)}))
        return results

    def action_from_chunk(self, env_id: int, chunk: Chunk, t: int) -> np.ndarray:
        return schema.action_from_chunk(chunk, t)

    def idle_action(self, env_id: int) -> np.ndarray:
        return SETTLE_ACTION.copy()

    def frame(self, env_id: int) -> np.ndarray | None:
        return self._frames.get(env_id)

    def video_state(self, env_id: int) -> tuple[np.ndarray, ...]:
        return self.envs[env_id].video_state()

    def video_frame(self, env_id: int, state: tuple[np.ndarray, ...]) -> np.ndarray:
        """The agent-view image of the scene at the end of a step, turned as the policy's is."""
        return rotate_180(self.envs[env_id].video_frame(state))

    def close(self) -> None:
        for env in self.envs:
            env.close()


class Adapter(SingleEnvView):
    """One LIBERO env for the per-slot `SimWorker` (`--task-option vectorized=false`); every slot then
    pays for its own scene, so prefer the vectorised default."""

    layout: dict[str, Any] = schema.LAYOUT
    episode_group = VectorAdapter.episode_group

    def __init__(self, **options: Any) -> None:
        options["num_envs"] = 1
        super().__init__(VectorAdapter(**options))

