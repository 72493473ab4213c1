"""The g1-pickplace scene as a MuJoCo model: the G1 robot fixed at the pelvis with position-controlled
arms, a table, a plate, an apple, weld constraints for grasping, and an ego-view camera in the head.

Only geometry lives here; what an episode does with it (layout, grasp, success) is `adapter.py`.
"""

from __future__ import annotations

from rolloutq.sim_workers.tasks.g1_pickplace import gl  # noqa: F401  (before mujoco)

# isort: split

import mujoco
import numpy as np
from rolloutq.sim_workers.g1_assets import g1_xml_path
from rolloutq.sim_workers.tasks.g1_pickplace.layout import (
    APPLE_RADIUS,
    ARM_JOINTS,
    CAMERA_PITCH,
    PHYSICS_DT,
    PLATE_HALF_HEIGHT,
    PLATE_RADIUS,
    TABLE_CENTER,
    TABLE_HALF,
    TABLE_TOP,
)


def build_model() -> mujoco.MjModel:
    spec = mujoco.MjSpec.from_file(str(g1_xml_path()))
    spec.option.timestep = PHYSICS_DT
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    _fix_robot(spec)
    _add_arm_actuators(spec)
    _add_room(spec)
    _add_table(spec.worldbody)
    _add_plate(spec.worldbody)
    _add_apple(spec.worldbody)
    _add_grasp_welds(spec)
    _add_ego_camera(spec)
    return spec.compile()


def _fix_robot(spec: mujoco.MjSpec) -> None:
    """Everything but the arms rigid, no robot collisions, gravity compensated, the asset's lights gone."""
    arm = {n for names in ARM_JOINTS.values() for n in names}
    for joint in list(spec.joints):
        if joint.name not in arm:
            spec.delete(joint)  # free joint, legs and waist: rigid
    for geom in list(spec.geoms):
        body = geom.parent.name
        if any(part in body for part in ("hip", "knee", "ankle")):
            spec.delete(geom)  # legs are under the table, never in the ego view: skip their meshes
            continue
        geom.contype = 0
        geom.conaffinity = 0
    for body in spec.bodies:
        if body.name != "world":
            body.gravcomp = 1.0
    for light in list(spec.lights):
        spec.delete(light)


def _add_arm_actuators(spec: mujoco.MjSpec) -> None:
    """A position actuator per arm joint, named as the joint without `_joint`."""
    for names in ARM_JOINTS.values():
        for name in names:
            j = spec.joint(name)
            j.damping = [4.0, 0.0, 0.0]
            j.armature = 0.02
            spec.add_actuator(
                name=name.replace("_joint", ""),
                target=name,
                trntype=mujoco.mjtTrn.mjTRN_JOINT,
                gaintype=mujoco.mjtGain.mjGAIN_FIXED,
                biastype=mujoco.mjtBias.mjBIAS_AFFINE,
                gainprm=[150.0] + [0.0] * 9,
                biasprm=[0.0, -150.0, 0.0] + [0.0] * 7,
                ctrlrange=j.range,
                ctrllimited=True,
            )


def _add_room(spec: mujoco.MjSpec) -> None:
    world = spec.worldbody
    spec.add_texture(
        name="grid",
        type=mujoco.mjtTexture.mjTEXTURE_2D,
        builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER,
        rgb1=[0.32, 0.34, 0.38],
        rgb2=[0.26, 0.28, 0.31],
        width=256,
        height=256,
    )
    spec.add_material(name="floor", textures=["", "grid"], texrepeat=[6, 6])
    world.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3, 3, 0.05], material="floor")
    world.add_light(pos=[0.3, -0.2, 2.5], dir=[0, 0, -1], diffuse=[0.8, 0.8, 0.8], castshadow=False)
    world.add_light(pos=[1.5, 1.0, 2.0], dir=[-0.6, -0.4, -0.7], diffuse=[0.3, 0.3, 0.3], castshadow=False)


def _add_table(world: mujoco.MjsBody) -> None:
    table = world.add_body(name="table", pos=[TABLE_CENTER[0], TABLE_CENTER[1], TABLE_TOP])
    table.add_geom(
        name="table_top",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[TABLE_HALF[0], TABLE_HALF[1], 0.02],
        pos=[0, 0, -0.02],
        rgba=[0.62, 0.47, 0.32, 1],
        friction=[1.0, 0.01, 0.001],
    )
    for sx in (-1, 1):
        for sy in (-1, 1):
            table.add_geom(
                type=mujoco.mjtGeom.mjGEOM_BOX,
                size=[0.025, 0.025, TABLE_TOP / 2 - 0.02],
                pos=[sx * (TABLE_HALF[0] - 0.04), sy * (TABLE_HALF[1] - 0.04), -TABLE_TOP / 2],
                rgba=[0.4, 0.3, 0.2, 1],
                contype=0,
                conaffinity=0,
            )


def _add_plate(world: mujoco.MjsBody) -> None:
    plate = world.add_body(name="plate", mocap=True, pos=[0.35, 0.0, TABLE_TOP + PLATE_HALF_HEIGHT])
    plate.add_geom(
        name="plate",
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=[PLATE_RADIUS, PLATE_HALF_HEIGHT, 0],
        rgba=[0.92, 0.93, 0.97, 1],
        friction=[1.0, 0.01, 0.001],
    )
    plate.add_geom(
        type=mujoco.mjtGeom.mjGEOM_CYLINDER,
        size=[PLATE_RADIUS * 0.55, 0.0005, 0],
        pos=[0, 0, PLATE_HALF_HEIGHT],
        rgba=[0.25, 0.45, 0.85, 1],
        contype=0,
        conaffinity=0,
    )


def _add_apple(world: mujoco.MjsBody) -> None:
    apple = world.add_body(name="apple", pos=[0.35, -0.2, TABLE_TOP + APPLE_RADIUS])
    apple.add_freejoint(name="apple_free")
    apple.add_geom(
        name="apple",
        type=mujoco.mjtGeom.mjGEOM_SPHERE,
        size=[APPLE_RADIUS, 0, 0],
        mass=0.15,
        rgba=[0.85, 0.08, 0.06, 1],
        friction=[1.2, 0.02, 0.01],  # rolling friction: a released apple does not roll away
        condim=6,
    )
    apple.add_geom(
        type=mujoco.mjtGeom.mjGEOM_CAPSULE,
        size=[0.004, 0.008, 0],
        pos=[0, 0, APPLE_RADIUS + 0.006],
        rgba=[0.35, 0.22, 0.08, 1],
        contype=0,
        conaffinity=0,
        mass=0.001,
    )


def _add_grasp_welds(spec: mujoco.MjSpec) -> None:
    """One inactive weld per hand (`left_grasp`, `right_grasp`): closing a hand near the apple turns it on."""
    for side in ("left", "right"):
        spec.add_equality(
            name=f"{side}_grasp",
            type=mujoco.mjtEq.mjEQ_WELD,
            name1=f"{side}_wrist_yaw_link",
            name2="apple",
            objtype=mujoco.mjtObj.mjOBJ_BODY,
            active=False,
            solref=[0.01, 1.0],
        )


def _add_ego_camera(spec: mujoco.MjSpec) -> None:
    """`ego_view`: in the head, pitched down at the table."""
    s, c = np.sin(CAMERA_PITCH), np.cos(CAMERA_PITCH)
    cam_mat = np.array([[0, -1, 0], [s, 0, c], [-c, 0, s]]).T  # columns: image right, image up, backwards
    cam_quat = np.zeros(4)
    mujoco.mju_mat2Quat(cam_quat, cam_mat.reshape(-1))
    spec.body("torso_link").add_camera(name="ego_view", pos=[0.09, 0.0, 0.46], fovy=78.0, quat=cam_quat)
