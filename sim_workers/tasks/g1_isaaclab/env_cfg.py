"""The G1 pick-and-place as an Isaac Lab 3.0 manager-based environment (kit-less: Newton physics on
MuJoCo-Warp, Newton's Warp renderer), registered with gymnasium as `Rolloutq-G1-PickPlace-v0`.

It rebuilds the MuJoCo task's scene (`sim_workers/tasks/g1_pickplace/scene.py`, whose numbers it
imports): mjlab's 29-DoF G1 converted to USD by `scripts/make_g1_usd.py`, pelvis fixed at 0.793 m,
legs and waist held stiff, gravity compensated, robot collisions off, the 14 arm joints under
position control (kp 150, damping 4, armature 0.02); table, apple and plate from Isaac Lab's
primitive shapes; the ego camera in the torso, 256 x 256. Physics 4 ms, an env step 10 of them.

The env's action is the flat REAL_G1 command per env (N, 28): left arm 7, right arm 7 (absolute
joint targets, rad), left hand 7, right hand 7 (see `mdp.HandGraspAction`). Its `policy`
observation group holds cheap state only; the camera renders when something reads it (lazy sensor
update), which rolloutq's adapter does once per policy query.
"""

from __future__ import annotations

import math

import gymnasium as gym
import isaaclab.envs.mdp as base_mdp
import isaaclab.sim as sim_utils
import numpy as np
import torch
from isaaclab.actuators import ImplicitActuatorCfg
from isaaclab.assets import ArticulationCfg, RigidObjectCfg
from isaaclab.envs import ManagerBasedRLEnvCfg
from isaaclab.envs.mdp import JointPositionActionCfg
from isaaclab.managers import (
    EventTermCfg,
    ObservationGroupCfg,
    ObservationTermCfg,
    RewardTermCfg,
    SceneEntityCfg,
    TerminationTermCfg,
)
from isaaclab.scene import InteractiveSceneCfg
from isaaclab.sensors import CameraCfg
from isaaclab.utils import configclass
from isaaclab.utils.math import quat_from_matrix
from isaaclab_newton.physics import MJWarpSolverCfg, NewtonCfg
from isaaclab_newton.renderers import NewtonWarpRendererCfg
from isaaclab_newton.sim.schemas import MujocoCollisionCfg, MujocoRigidBodyCfg, NewtonArticulationCfg
from rolloutq.sim_workers.real_g1 import IMAGE_SIZE
from rolloutq.sim_workers.tasks.g1_isaaclab import mdp
from rolloutq.sim_workers.tasks.g1_pickplace.layout import (
    APPLE_RADIUS,
    ARM_JOINTS,
    CAMERA_PITCH,
    CONTROL_DT,
    MAX_STEPS,
    PELVIS_POS,
    PHYSICS_DT,
    PLATE_HALF_HEIGHT,
    PLATE_RADIUS,
    REST_ARM,
    TABLE_CENTER,
    TABLE_HALF,
    TABLE_TOP,
)

GYM_ID = "Rolloutq-G1-PickPlace-v0"
ARM_ORDER = [*ARM_JOINTS["left"], *ARM_JOINTS["right"]]
TORSO = "Robot/Geometry/pelvis/waist_yaw_link/waist_roll_link/torso_link"
"""The torso's prim under an env, as the converter nests bodies."""
CAMERA_FOVY = 78.0
FOCAL_LENGTH = 24.0


def _camera_quat() -> tuple[float, float, float, float]:
    """The MuJoCo task's `ego_view` orientation in the torso frame, (x, y, z, w), OpenGL axes
    (columns: image right, image up, backwards)."""
    s, c = math.sin(CAMERA_PITCH), math.cos(CAMERA_PITCH)
    mat = torch.tensor(np.array([[0, -1, 0], [s, 0, c], [-c, 0, s]]).T, dtype=torch.float64)
    return tuple(float(v) for v in quat_from_matrix(mat))  # type: ignore[return-value]


def _kinematic(shape: sim_utils.ShapeCfg, collide: bool = True) -> sim_utils.ShapeCfg:
    """A primitive as a kinematic body: Newton's renderer draws simulation shapes only."""
    shape.rigid_props = sim_utils.UsdPhysicsRigidBodyCfg(kinematic_enabled=True)
    shape.mass_props = sim_utils.MassCfg(mass=1.0)
    shape.collision_props = sim_utils.UsdPhysicsCollisionCfg(collision_enabled=collide)
    return shape


def _color(rgb: tuple[float, float, float]) -> sim_utils.PreviewSurfaceCfg:
    return sim_utils.PreviewSurfaceCfg(diffuse_color=rgb, roughness=0.8, metallic=0.0)


@configclass
class G1PickPlaceSceneCfg(InteractiveSceneCfg):
    robot: ArticulationCfg = ArticulationCfg(
        prim_path="{ENV_REGEX_NS}/Robot",
        spawn=sim_utils.UsdFileCfg(
            usd_path="",  # set by the adapter (the generated file); see scripts/make_g1_usd.py
            fix_root_link=True,
            rigid_props=MujocoRigidBodyCfg(gravcomp=1.0),
            collision_props=sim_utils.UsdPhysicsCollisionCfg(collision_enabled=False),
            articulation_props=NewtonArticulationCfg(self_collision_enabled=False),
        ),
        init_state=ArticulationCfg.InitialStateCfg(
            pos=tuple(float(v) for v in PELVIS_POS),
            joint_pos={name: float(q) for side in ("left", "right")
                       for name, q in zip(ARM_JOINTS[side], REST_ARM[side], strict=True)},
        ),
        actuators={
            "arms": ImplicitActuatorCfg(joint_names_expr=ARM_ORDER, stiffness=150.0, damping=4.0, armature=0.02),
            "body": ImplicitActuatorCfg(joint_names_expr=[".*_hip_.*", ".*_knee_joint", ".*_ankle_.*", "waist_.*"],
                                        stiffness=3000.0, damping=100.0),
        },
    )
    floor: RigidObjectCfg = RigidObjectCfg(
        prim_path="{ENV_REGEX_NS}/Floor",
        spawn=_kinematic(sim_utils.CuboidCfg(size=(3.0, 3.0, 0.02), visual_material=_color((0.29, 0.31, 0.34))),
                         collide=False),
        init_state=RigidObjectCfg.InitialStateCfg(pos=(0.3, 0.0, -0.01)),
    )
    table: RigidObjectCfg = RigidObjectCfg(
        prim_path="{ENV_REGEX_NS}/Table",
        spawn=_kinematic(sim_utils.CuboidCfg(size=(2 * TABLE_HALF[0], 2 * TABLE_HALF[1], 0.04),
                                             visual_material=_color((0.62, 0.47, 0.32)),
                                             physics_material=sim_utils.RigidBodyMaterialCfg(
                                                 static_friction=1.0, dynamic_friction=1.0))),
        init_state=RigidObjectCfg.InitialStateCfg(pos=(float(TABLE_CENTER[0]), float(TABLE_CENTER[1]),
                                                       TABLE_TOP - 0.02)),
    )
    plate: RigidObjectCfg = RigidObjectCfg(
        prim_path="{ENV_REGEX_NS}/Plate",
        spawn=_kinematic(sim_utils.CylinderCfg(radius=PLATE_RADIUS, height=2 * PLATE_HALF_HEIGHT,
                                               visual_material=_color((0.92, 0.93, 0.97)),
                                               physics_material=sim_utils.RigidBodyMaterialCfg(
                                                   static_friction=1.0, dynamic_friction=1.0))),
        init_state=RigidObjectCfg.InitialStateCfg(pos=(0.35, 0.0, TABLE_TOP + PLATE_HALF_HEIGHT)),
    )
    apple: RigidObjectCfg = RigidObjectCfg(
        prim_path="{ENV_REGEX_NS}/Apple",
        spawn=sim_utils.SphereCfg(
            radius=APPLE_RADIUS,
            visual_material=_color((0.85, 0.08, 0.06)),
            rigid_props=sim_utils.UsdPhysicsRigidBodyCfg(),
            mass_props=sim_utils.MassCfg(mass=0.15),
            collision_props=[sim_utils.UsdPhysicsCollisionCfg(), MujocoCollisionCfg(condim=6)],
            physics_material=sim_utils.RigidBodyMaterialCfg(static_friction=1.2, dynamic_friction=1.2),
        ),
        init_state=RigidObjectCfg.InitialStateCfg(pos=(0.35, -0.2, TABLE_TOP + APPLE_RADIUS)),
    )
    ego_view: CameraCfg = CameraCfg(
        prim_path="{ENV_REGEX_NS}/" + TORSO + "/ego_view",
        offset=CameraCfg.OffsetCfg(pos=(0.09, 0.0, 0.46), rot=_camera_quat(), convention="opengl"),
        spawn=sim_utils.PinholeCameraCfg(
            focal_length=FOCAL_LENGTH,
            horizontal_aperture=2 * FOCAL_LENGTH * math.tan(math.radians(CAMERA_FOVY) / 2),
            clipping_range=(0.01, 10.0),
        ),
        data_types=["rgb"],
        update_latest_camera_pose=True,  # follow the torso (the waist is stiff, not rigid)
        width=IMAGE_SIZE,
        height=IMAGE_SIZE,
        renderer_cfg=NewtonWarpRendererCfg(use_cuda_graph=False),
    )


@configclass
class ActionsCfg:
    arms = JointPositionActionCfg(asset_name="robot", joint_names=ARM_ORDER, scale=1.0, use_default_offset=False,
                                  preserve_order=True)
    hands = mdp.HandGraspActionCfg(asset_name="robot")


@configclass
class ObservationsCfg:
    @configclass
    class PolicyCfg(ObservationGroupCfg):
        arm_joint_pos = ObservationTermCfg(func=base_mdp.joint_pos,
                                           params={"asset_cfg": SceneEntityCfg("robot", joint_names=ARM_ORDER,
                                                                               preserve_order=True)})
        hands = ObservationTermCfg(func=mdp.hand_state)
        apple_pose = ObservationTermCfg(func=mdp.object_pose_in_robot_frame,
                                        params={"asset_cfg": SceneEntityCfg("apple")})
        plate_pose = ObservationTermCfg(func=mdp.object_pose_in_robot_frame,
                                        params={"asset_cfg": SceneEntityCfg("plate")})

        def __post_init__(self) -> None:
            self.enable_corruption = False
            self.concatenate_terms = True

    @configclass
    class SimStateCfg(ObservationGroupCfg):
        """What a video frame is drawn from: all joint positions, apple and plate poses (world frame)."""

        joint_pos = ObservationTermCfg(func=base_mdp.joint_pos)
        apple = ObservationTermCfg(func=mdp.root_pose_w, params={"asset_cfg": SceneEntityCfg("apple")})
        plate = ObservationTermCfg(func=mdp.root_pose_w, params={"asset_cfg": SceneEntityCfg("plate")})

        def __post_init__(self) -> None:
            self.enable_corruption = False
            self.concatenate_terms = True

    policy: PolicyCfg = PolicyCfg()
    sim_state: SimStateCfg = SimStateCfg()


@configclass
class EventsCfg:
    reset_scene = EventTermCfg(func=base_mdp.reset_scene_to_default, mode="reset",
                               params={"reset_joint_targets": True})
    layout = EventTermCfg(func=mdp.SeededLayout, mode="reset")


@configclass
class RewardsCfg:
    success = RewardTermCfg(func=mdp.apple_on_plate, weight=1.0)


@configclass
class TerminationsCfg:
    time_out = TerminationTermCfg(func=base_mdp.time_out, time_out=True)
    success = TerminationTermCfg(func=mdp.apple_on_plate)
    fell = TerminationTermCfg(func=base_mdp.root_height_below_minimum,
                              params={"minimum_height": TABLE_TOP - 0.1, "asset_cfg": SceneEntityCfg("apple")})


@configclass
class G1PickPlaceEnvCfg(ManagerBasedRLEnvCfg):
    scene: G1PickPlaceSceneCfg = G1PickPlaceSceneCfg(num_envs=1, env_spacing=10.0)  # out of each other's camera view
    observations: ObservationsCfg = ObservationsCfg()
    actions: ActionsCfg = ActionsCfg()
    events: EventsCfg = EventsCfg()
    rewards: RewardsCfg = RewardsCfg()
    terminations: TerminationsCfg = TerminationsCfg()

    def __post_init__(self) -> None:
        self.sim.dt = PHYSICS_DT
        self.decimation = round(CONTROL_DT / PHYSICS_DT)
        self.episode_length_s = MAX_STEPS * CONTROL_DT
        self.sim.render_interval = self.decimation
        self.compute_final_obs = True  # an ended episode's last state, before the same-step auto-reset
        self.sim.device = "cpu"
        self.sim.physics = NewtonCfg(
            solver_cfg=MJWarpSolverCfg(njmax=64, nconmax=16, integrator="implicitfast", cone="elliptic",
                                       impratio=1.0),
            num_substeps=1,
            use_cuda_graph=False,
        )


def register() -> None:
    """Register `GYM_ID` with gymnasium (once per process)."""
    if GYM_ID not in gym.registry:
        gym.register(id=GYM_ID, entry_point="isaaclab.envs:ManagerBasedRLEnv", disable_env_checker=True,
                     kwargs={"env_cfg_entry_point": f"{__name__}:G1PickPlaceEnvCfg"})


register()
