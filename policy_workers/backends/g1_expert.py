"""Scripted expert for the G1 pick-and-place task: inverse kinematics to reach, grasp, carry, release.

It reads only the observation: the right arm's joint state, the right hand's state (its last
command) and the sim-only key `privileged.object_poses` (apple and plate poses in the pelvis
frame), so it needs the task's `privileged=True` option. It keeps no per-rollout memory: every
call re-plans from the observation, which makes it safe to batch observations from any number of
rollouts in any order. A request may carry K rows (a vectorised simulator's K sub-envs, e.g.
g1-isaaclab with `rows_per_request`; its schema's leading dimension is open): each row is planned
on its own, from its own state alone, and the chunk has K rows in the same order.

Each call plans 40 steps ahead: a palm target moves at a bounded speed through the phases
(above the apple -> down -> close the hand -> up -> above the plate -> down -> open -> up), and
damped-least-squares IK on the G1's own MJCF (loaded from mjlab's asset folder) turns each target
into right-arm joint targets, warm-started from the previous step.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from rolloutq.broker.real_g1 import ACTION_DIMS, FRAMES, IMAGE_SIZE, STATE_DIMS, TEXT_KEY, VIDEO_KEY
from rolloutq.policy_workers.backends._g1_assets import g1_xml_path
from rolloutq.policy_workers.base import Chunk, Obs, PolicyBackend, PolicyMetadata
from rolloutq.policy_workers.batching import flatten
from rolloutq.policy_workers.errors import SchemaMismatch

CHUNK = 40
HORIZON = 8
DT = 0.04  # env step of the task (s)
SPEED = 0.25  # palm target speed (m/s)
ARM = [
    "shoulder_pitch",
    "shoulder_roll",
    "shoulder_yaw",
    "elbow",
    "wrist_roll",
    "wrist_pitch",
    "wrist_yaw",
]
# Nominal posture (null-space bias of the IK) and the left arm's parking pose.
NOMINAL_RIGHT = np.array([-0.4, -0.3, 0.0, 0.8, 0.0, 0.3, 0.0])
NOMINAL_LEFT = np.array([-0.4, 0.3, 0.0, 0.8, 0.0, 0.3, 0.0])
LEFT_PARK = np.array([0.2, 0.4, 0.0, 0.4, 0.0, -1.0, 0.0])
TABLE_Z = 0.78 - 0.793  # table top in the pelvis frame
APPLE_R = 0.035
PLATE_TOP = TABLE_Z + 0.012
GRASP_DZ = 0.03  # palm above the apple centre when grasping
APPROACH = 0.10  # pre-grasp height above the grasp point
CARRY_Z = TABLE_Z + APPLE_R + 0.15  # apple height while carrying
HAND_AXIS = np.array([1.0, 0.0, -0.5]) / np.sqrt(1.25)  # hand points forward, 27 degrees down


POSES_KEY = "privileged.object_poses"
PLANNED_FROM = ("state.right_arm", "state.right_hand", "state.left_arm", POSES_KEY)
"""The keys a plan reads; each must carry one row per row of the request."""


def action_schema() -> dict[str, dict[str, Any]]:
    dims = ACTION_DIMS
    return {k: {"dtype": "float32", "shape": [-1, CHUNK, d]} for k, d in dims.items()}


def observation_schema() -> dict[str, dict[str, Any]]:
    """The task's privileged REAL_G1 observation; the leading dimension (rows) is open."""
    schema: dict[str, dict[str, Any]] = {
        VIDEO_KEY: {"dtype": "uint8", "shape": [-1, FRAMES, IMAGE_SIZE, IMAGE_SIZE, 3]}}
    for key, dim in STATE_DIMS.items():
        schema[key] = {"dtype": "float32", "shape": [-1, 1, dim]}
    schema[TEXT_KEY] = {"kind": "text"}
    schema[POSES_KEY] = {"dtype": "float32", "shape": [-1, 2, 7]}
    return schema


def split_rows(obs: Obs, where: str = "observation") -> list[Obs]:
    """A request of K rows as K one-row observations of the keys a plan reads."""
    for key in PLANNED_FROM:
        if key not in obs:
            if key == POSES_KEY:
                raise KeyError("g1-expert needs privileged.object_poses: run the task with privileged=True")
            raise SchemaMismatch(f"{where}: missing {key}")
    arrays = {k: np.asarray(obs[k]) for k in PLANNED_FROM}
    rows = {k: a.shape[0] if a.ndim else 0 for k, a in arrays.items()}
    k = rows["state.right_arm"]
    if k < 1 or any(n != k for n in rows.values()):
        raise SchemaMismatch(f"{where}: every key needs one row per env, got rows {rows}")
    return [{key: a[j : j + 1] for key, a in arrays.items()} for j in range(k)]


class ArmKinematics:
    """Forward kinematics and IK of one G1 arm, in the pelvis frame (base fixed, waist rigid)."""

    def __init__(self, side: str = "right") -> None:
        spec = mujoco.MjSpec.from_file(str(g1_xml_path()))
        keep = {f"{side}_{j}_joint" for j in ARM}
        for joint in list(spec.joints):
            if joint.name not in keep:
                spec.delete(joint)
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        self.site = self.model.site(f"{side}_palm").id
        self.hand_body = self.model.body(f"{side}_wrist_yaw_link").id
        self.pelvis = self.model.body("pelvis").id
        self.qadr = np.array([self.model.jnt_qposadr[self.model.joint(f"{side}_{j}_joint").id] for j in ARM])
        self.dadr = np.array([self.model.jnt_dofadr[self.model.joint(f"{side}_{j}_joint").id] for j in ARM])
        self.low = self.model.jnt_range[[self.model.joint(f"{side}_{j}_joint").id for j in ARM], 0]
        self.high = self.model.jnt_range[[self.model.joint(f"{side}_{j}_joint").id for j in ARM], 1]
        self.nominal = NOMINAL_RIGHT if side == "right" else NOMINAL_LEFT
        self._jp = np.zeros((3, self.model.nv))
        self._jr = np.zeros((3, self.model.nv))

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Palm site position and rotation in the pelvis frame."""
        self.data.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.model, self.data)
        base = self.data.xpos[self.pelvis]
        return self.data.site_xpos[self.site] - base, self.data.site_xmat[self.site].reshape(3, 3).copy()

    def ik(self, target: np.ndarray, q0: np.ndarray, iters: int = 8) -> np.ndarray:
        """Joint angles putting the palm at `target` with the hand pointing along HAND_AXIS."""
        q = q0.copy()
        for _ in range(iters):
            pos, rot = self.fk(q)
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jacSite(self.model, self.data, self._jp, self._jr, self.site)
            jp, jr = self._jp[:, self.dadr], self._jr[:, self.dadr]
            e_pos = target - pos
            e_rot = 0.3 * np.cross(rot[:, 0], HAND_AXIS)
            err = np.concatenate([e_pos, e_rot])
            jac = np.vstack([jp, 0.3 * jr])
            lam = 1e-3
            jjt = jac @ jac.T + lam * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            # posture bias in the null space
            null = np.eye(7) - jac.T @ np.linalg.solve(jjt, jac)
            dq += null @ (0.05 * (self.nominal - q))
            q = np.clip(q + dq, self.low, self.high)
            if np.linalg.norm(e_pos) < 5e-4:
                break
        return q


def _toward(p: np.ndarray, goal: np.ndarray, step: float) -> tuple[np.ndarray, bool]:
    d = goal - p
    n = float(np.linalg.norm(d))
    if n <= step:
        return goal.copy(), True
    return p + d * (step / n), False


class Planner:
    """Stateless 40-step plan for the right arm from one observation of one row."""

    def __init__(self) -> None:
        self.kin = ArmKinematics("right")
        self.left_kin = ArmKinematics("left")

    def plan(self, obs: Obs) -> Chunk:
        q = np.asarray(obs["state.right_arm"], np.float64).reshape(7)
        hand = float(np.asarray(obs["state.right_hand"]).mean())
        poses = np.asarray(obs["privileged.object_poses"], np.float64).reshape(2, 7)
        apple, plate = poses[0, :3], poses[1, :3]
        palm, _ = self.kin.fk(q)
        holding = hand > 0.5 and np.linalg.norm(palm - apple) < 0.08
        offset = apple - palm if holding else np.array([0.0, 0.0, -GRASP_DZ])
        placed = (
            not holding
            and np.linalg.norm(apple[:2] - plate[:2]) < 0.06
            and apple[2] < PLATE_TOP + APPLE_R + 0.02
        )
        step = SPEED * DT
        x = palm.copy()
        grasp = apple + np.array([0.0, 0.0, GRASP_DZ])
        pre = grasp + np.array([0.0, 0.0, APPROACH])
        place = np.array([plate[0], plate[1], PLATE_TOP + APPLE_R + 0.004]) - offset
        above_plate = np.array([place[0], place[1], CARRY_Z - offset[2]])
        wait = 0
        targets, hands = [], []
        for _ in range(CHUNK):
            h = 0.0
            if placed:  # released: back up to the approach height and hold there
                x, _ = _toward(x, np.array([x[0], x[1], max(x[2], place[2] + APPROACH)]), step)
            elif not holding:
                near_xy = np.linalg.norm(x[:2] - grasp[:2]) < 0.015
                if not near_xy:
                    goal = pre if x[2] >= grasp[2] + 0.5 * APPROACH else np.array([x[0], x[1], pre[2]])
                    if goal is not pre and abs(x[2] - pre[2]) < 0.01:
                        goal = pre
                    x, _ = _toward(x, goal, step)
                else:
                    x, reached = _toward(x, grasp, step)
                    if reached:
                        h = 1.0
                        wait += 1
                        if wait >= 3:
                            holding = True
                            offset = np.array([0.0, 0.0, -GRASP_DZ])
                            place = np.array([plate[0], plate[1], PLATE_TOP + APPLE_R + 0.004]) - offset
                            above_plate = np.array([place[0], place[1], CARRY_Z - offset[2]])
            else:
                h = 1.0
                carry_z = above_plate[2]
                if np.linalg.norm(x[:2] - place[:2]) > 0.01:
                    if x[2] < carry_z - 0.01:
                        x, _ = _toward(x, np.array([x[0], x[1], carry_z]), step)
                    else:
                        x, _ = _toward(x, above_plate, step)
                else:
                    x, reached = _toward(x, place, step)
                    if reached:
                        h = 0.0
                        holding = False
                        placed = True
            targets.append(x.copy())
            hands.append(h)
        qs = np.zeros((CHUNK, 7))
        eef = np.zeros((CHUNK, 9))
        qi = q
        for t, target in enumerate(targets):
            qi = self.kin.ik(target, qi, iters=10 if t == 0 else 3)
            qs[t] = qi
            pos, rot = self.kin.fk(qi)
            eef[t] = np.concatenate([pos, rot[0], rot[1]])
        lq = np.asarray(obs["state.left_arm"], np.float64).reshape(7)
        lpos, lrot = self.left_kin.fk(LEFT_PARK)
        chunk = {
            "right_arm": qs,
            "right_hand": np.repeat(np.asarray(hands)[:, None], 7, axis=1),
            "right_wrist_eef_9d": eef,
            "left_arm": np.linspace(lq, LEFT_PARK, CHUNK),
            "left_hand": np.zeros((CHUNK, 7)),
            "left_wrist_eef_9d": np.tile(np.concatenate([lpos, lrot[0], lrot[1]]), (CHUNK, 1)),
            "waist": np.zeros((CHUNK, 3)),
            "base_height_command": np.full((CHUNK, 1), 0.75),
            "navigate_command": np.zeros((CHUNK, 3)),
        }
        return {k: v.astype(np.float32)[None] for k, v in chunk.items()}


class Backend(PolicyBackend):
    """The scripted expert. Needs observations with `privileged.object_poses`."""

    def __init__(self, **_: Any) -> None:
        self.planner: Planner | None = None

    def load(self) -> None:
        self.planner = Planner()

    def metadata(self) -> PolicyMetadata:
        return PolicyMetadata(
            model_id="g1-expert/ik-v1",
            observation_schema=observation_schema(),
            action_schema=action_schema(),
            chunk_length=CHUNK,
            action_horizon=HORIZON,
            device="cpu",
            parameters=0,
            description="Scripted IK expert for g1-pickplace (needs the task's privileged=True); a request "
                        "may carry one row per env.",
        )

    def infer(self, batch: list[Obs]) -> list[Chunk]:
        if self.planner is None:
            self.load()
        planner = self.planner
        assert planner is not None
        # a nested observation passed the schema check flattened; check every request before planning
        requests = [split_rows(flatten(o), f"observation {i}") for i, o in enumerate(batch)]
        chunks = []
        for rows in requests:
            plans = [planner.plan(row) for row in rows]
            chunks.append(plans[0] if len(plans) == 1 else
                          {key: np.concatenate([p[key] for p in plans]) for key in plans[0]})
        return chunks
