"""rolloutq's side of the Isaac Lab G1 task: K sub-environments of `Rolloutq-G1-PickPlace-v0` in one
process, spoken to in the REAL_G1 schema through `sim_workers/real_g1.py`, as the MuJoCo task is.

`VectorAdapter` is what a sweep runs (one request per step for all the envs that are due);
`Adapter` is one env for the per-slot worker. Videos: `video_state` keeps the ego camera's image after
the reset and after each step. The camera renders all K sub-environments at once and at most once per
step, whoever reads it (the observations read it too), so recording several episodes costs one render
a step. An episode that Isaac Lab ended (and auto-reset in the same step) keeps its last joint and
object poses instead, and `video_frame` poses its env in them and renders that one frame after the
episode.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from rolloutq.sim_workers import real_g1
from rolloutq.sim_workers.base import Chunk, Obs, StepResult, TaskInfo
from rolloutq.sim_workers.errors import TaskUnavailable
from rolloutq.sim_workers.tasks.g1_pickplace.layout import ARM_JOINTS, CONTROL_DT, MAX_STEPS, REST_ARM
from rolloutq.sim_workers.tasks.g1_pickplace.layout import observation_schema as observation_schema
from rolloutq.sim_workers.vector import SingleEnvView, VectorSimAdapter

NAME = "g1-isaaclab"
USD_RELATIVE = Path("assets/rolloutq/g1_29dof/g1_29dof_rev_1_0.usda")
"""Where `scripts/make_g1_usd.py` writes the robot, under the Isaac Lab venv (`sys.prefix`)."""
WAIST_JOINTS = ("waist_yaw_joint", "waist_roll_joint", "waist_pitch_joint")
IDLE = np.concatenate([REST_ARM["left"], REST_ARM["right"], np.zeros(14)]).astype(np.float32)


def default_usd_path() -> Path:
    return Path(sys.prefix) / USD_RELATIVE


def _np(x: Any) -> np.ndarray:
    """A copy (on the CPU a tensor's numpy view would share the env's buffers)."""
    x = x.torch if hasattr(x, "torch") else x
    return x.detach().cpu().numpy().copy()


class VectorAdapter(VectorSimAdapter):
    """`num_envs` G1 pick-and-place envs in one Isaac Lab process. Options as the MuJoCo task's
    (`privileged`, `render`, `max_steps`), plus `usd_path` (the converted G1; default under the
    venv) and `device` (`cpu`)."""

    vectorize_by_default = True

    def __init__(self, num_envs: int = 1, privileged: bool = False, render: bool = True,
                 max_steps: int = MAX_STEPS, usd_path: str = "", device: str = "cpu", **_: Any) -> None:
        try:
            import torch
            from isaaclab.envs import ManagerBasedRLEnv
        except ImportError as e:
            raise TaskUnavailable(f"task {NAME!r} runs with Isaac Lab 3.0, which is not installed here ({e}): use the "
                                  "Isaac Lab venv (scripts/install_isaaclab.sh)") from e
        usd = Path(usd_path) if usd_path else default_usd_path()
        if not usd.is_file():
            raise TaskUnavailable(f"task {NAME!r} needs the G1 converted to USD at {usd}: run scripts/make_g1_usd.py "
                                  "(or pass --task-option usd_path=...)")
        from isaaclab.utils.math import matrix_from_quat, subtract_frame_transforms
        from rolloutq.sim_workers.tasks.g1_isaaclab import mdp
        from rolloutq.sim_workers.tasks.g1_isaaclab.env_cfg import G1PickPlaceEnvCfg

        cfg = G1PickPlaceEnvCfg()
        cfg.scene.num_envs = int(num_envs)
        cfg.scene.robot.spawn.usd_path = str(usd.resolve())
        cfg.sim.device = device
        cfg.episode_length_s = int(max_steps) * CONTROL_DT
        self.env = ManagerBasedRLEnv(cfg)
        self._torch, self._to_robot, self._matrix = torch, subtract_frame_transforms, matrix_from_quat
        self.num_envs = int(num_envs)
        self.privileged, self.render_enabled = bool(privileged), bool(render)
        self.info = TaskInfo(
            name=NAME, instruction=real_g1.INSTRUCTION, max_steps=int(max_steps), fps=1.0 / CONTROL_DT,
            description=(
                "Unitree G1 pick-and-place in Isaac Lab 3.0 (Newton physics on MuJoCo-Warp, Newton Warp renderer, "
                "CPU): the g1-pickplace scene and rules, mjlab's 29-DoF G1 converted to USD (pelvis fixed, legs "
                "and waist held stiff), table/apple/plate from primitive shapes. Grasp: a closed hand within 6 cm "
                "carries the apple kinematically."),
        )
        self.robot, self.apple, self.plate = (self.env.scene[k] for k in ("robot", "apple", "plate"))
        self.camera = self.env.scene["ego_view"]
        self.hands = self.env.action_manager.get_term(mdp.HAND_TERM)
        self.layout = self.env.event_manager.get_term_cfg("layout").func
        names = list(self.robot.joint_names)
        self._arm = {s: [names.index(j) for j in ARM_JOINTS[s]] for s in ("left", "right")}
        self._waist = [names.index(j) for j in WAIST_JOINTS]
        limits = _np(self.robot.data.joint_pos_limits)[0]
        arm = self._arm["left"] + self._arm["right"]
        self._low, self._high = limits[arm, 0], limits[arm, 1]
        self._steps = np.zeros(self.num_envs, np.int64)
        self._reset_in_step = np.zeros(self.num_envs, bool)
        self._frames: dict[int, np.ndarray] = {}
        obs, _ = self.env.reset()
        self._sim_state = _np(obs["sim_state"])

    # --- episode -----------------------------------------------------------------------------------

    def reset(self, env_ids: list[int], seeds: list[int]) -> None:
        self.layout.set_seeds(env_ids, seeds)
        obs, _ = self.env.reset(env_ids=self._torch.tensor(env_ids, dtype=self._torch.int64, device=self.env.device))
        self._sim_state[env_ids] = _np(obs["sim_state"])[env_ids]
        self._steps[env_ids] = 0
        self._reset_in_step[env_ids] = False
        for i in env_ids:
            self._frames.pop(i, None)

    def step(self, actions: np.ndarray) -> list[StepResult]:
        actions = np.asarray(actions, np.float32).reshape(self.num_envs, real_g1.ENV_ACTION_DIM).copy()
        if not np.all(np.isfinite(actions)):
            raise ValueError("non-finite env action")
        actions[:, :14] = np.clip(actions[:, :14], self._low, self._high)
        obs, _, terminated, truncated, extras = self.env.step(self._torch.from_numpy(actions).to(self.env.device))
        self._steps += 1
        tm = self.env.termination_manager
        success, fell = _np(tm.get_term("success")), _np(tm.get_term("fell"))
        ended = _np(terminated) | _np(truncated)  # these envs were reset inside the step
        self._reset_in_step = ended
        self._sim_state = _np(obs["sim_state"])
        if ended.any():
            self._sim_state[ended] = _np(extras["final_obs"]["sim_state"])[ended]
        done = ended | (self._steps >= self.info.max_steps)
        return [StepResult(reward=float(success[i]), done=bool(done[i]), success=bool(success[i]),
                           info={"steps": int(self._steps[i]), "fell": bool(fell[i])}) for i in range(self.num_envs)]

    def action_from_chunk(self, env_id: int, chunk: Chunk, t: int) -> np.ndarray:
        return real_g1.chunk_step_to_env_action(chunk, t).reshape(-1)

    def idle_action(self, env_id: int) -> np.ndarray:
        return IDLE

    # --- observation -------------------------------------------------------------------------------

    def _images(self, env_ids: list[int]) -> np.ndarray:
        if not self.render_enabled:
            return np.zeros((len(env_ids), real_g1.IMAGE_SIZE, real_g1.IMAGE_SIZE, 3), np.uint8)
        return _np(self.camera.data.output["rgb"])[env_ids, ..., :3]

    def _in_robot_frame(self, pos: Any, quat: Any) -> tuple[np.ndarray, np.ndarray]:
        """World poses, (N, K, 3) and (N, K, 4) tensors (x, y, z, w) -> the same in the pelvis frame, numpy."""
        data = self.robot.data
        n, k = pos.shape[:2]
        root_pos = data.root_link_pos_w.torch[:, None].expand(n, k, 3).reshape(-1, 3)
        root_quat = data.root_link_quat_w.torch[:, None].expand(n, k, 4).reshape(-1, 4)
        p, q = self._to_robot(root_pos, root_quat, pos.reshape(-1, 3), quat.reshape(-1, 4))
        return p.reshape(n, k, 3).cpu().numpy(), q.reshape(n, k, 4).cpu().numpy()

    def object_poses(self) -> np.ndarray:
        """(N, 2, 7) float32: apple and plate pose (xyz + wxyz quaternion, as the MuJoCo task) in the pelvis frame."""
        t = self._torch
        pos = t.stack([x.data.root_link_pos_w.torch for x in (self.apple, self.plate)], 1)
        quat = t.stack([x.data.root_link_quat_w.torch for x in (self.apple, self.plate)], 1)
        p, q = self._in_robot_frame(pos, quat)
        return np.concatenate([p, q[..., [3, 0, 1, 2]]], -1).astype(np.float32)

    def palm_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2, 3) palm positions and (N, 2, 3, 3) rotations (left, right) in the pelvis frame."""
        _, wrist_quat = self.hands.wrist_poses()
        p, q = self._in_robot_frame(self.hands.palm_positions(), wrist_quat)
        return p, self._matrix(self._torch.from_numpy(q)).numpy()

    def observe(self, env_ids: list[int]) -> list[Obs]:
        q = _np(self.robot.data.joint_pos)
        hands = _np(self.hands.processed_actions)
        palm_pos, palm_rot = self.palm_poses()
        images = self._images(env_ids)
        objects = self.object_poses() if self.privileged else None
        out = []
        for k, i in enumerate(env_ids):
            frame = images[k]
            prev = self._frames.get(i, frame)
            self._frames[i] = frame
            obs = real_g1.build_observation(
                np.stack([prev, frame]),
                left_eef=real_g1.pose_to_9d(palm_pos[i, 0], palm_rot[i, 0]),
                right_eef=real_g1.pose_to_9d(palm_pos[i, 1], palm_rot[i, 1]),
                left_arm=q[i, self._arm["left"]], right_arm=q[i, self._arm["right"]],
                left_hand=hands[i, :7], right_hand=hands[i, 7:], waist=q[i, self._waist])
            if objects is not None:
                obs["privileged.object_poses"] = objects[i:i + 1]
            out.append(obs)
        return out

    def frame(self, env_id: int) -> np.ndarray | None:
        return self._frames.get(env_id)

    # --- videos --------------------------------------------------------------------------

    def video_state(self, env_id: int) -> np.ndarray:
        """The camera's (H, W, 3) image of env `env_id` as it is now; for an env that Isaac Lab reset
        inside the last step (its camera shows the next episode's scene), the ended episode's joint
        positions and apple and plate poses, (D,), drawn by `video_frame`."""
        if self.render_enabled and not self._reset_in_step[env_id]:
            return self._images([env_id])[0].copy()
        return self._sim_state[env_id].copy()

    def video_frame(self, env_id: int, state: np.ndarray) -> np.ndarray:
        if state.ndim == 3:
            return state
        t, dev = self._torch, self.env.device
        ids = t.tensor([env_id], dtype=t.int64, device=dev)
        joints, apple, plate = (t.from_numpy(s).to(dev)[None] for s in np.split(state, [-14, -7]))
        self.robot.write_joint_position_to_sim_index(position=joints, env_ids=ids)
        for asset, pose in ((self.apple, apple), (self.plate, plate)):
            asset.write_root_pose_to_sim_index(root_pose=pose, env_ids=ids)
        self.env.sim.forward()
        self.env.scene.update(dt=0.0)
        return _np(self.camera.data.output["rgb"])[env_id, ..., :3]

    def close(self) -> None:
        self.env.close()


class Adapter(SingleEnvView):
    """One env (`num_envs=1`) for the per-slot worker. Isaac Lab allows one simulation per process:
    run one slot per simulator process (`--envs-per-sim 1`), or the vectorised adapter."""

    def __init__(self, **options: Any) -> None:
        options["num_envs"] = 1
        super().__init__(VectorAdapter(**options))
