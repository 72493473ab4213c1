"""A small manager-based G1 environment on mjlab, to exercise the Isaac Lab adapter on the CPU.

Not a pick-and-place task: the Unitree G1 that mjlab ships (29 body joints, rigid hands, no
fingers) with its pelvis welded to the world (a fixed-base upper-body setup like Isaac Lab's
fixed-base G1 pick-place variant), absolute joint-position targets for all 29 joints, a joint
position observation group, an optional camera sensor, and a time limit. It exists so that the
adapter's code paths (vectorised reset/step, torch tensors batch-first, per-env termination,
camera rendering, action mapping by joint name) run for real without Isaac Sim.

Build it with `make_env_cfg(num_envs=..., camera=...)`; the adapter takes it through
`env_cfg="rolloutq.sim_workers.adapters._mjlab_g1:make_env_cfg"`.
"""

from __future__ import annotations

from typing import Any


def _fixed_base(spec_fn: Any) -> Any:
    def build() -> Any:
        spec = spec_fn()
        for joint in list(spec.joints):
            if joint.type == 0:  # mjJNT_FREE: drop it and the pelvis is welded to the world
                spec.delete(joint)
        return spec

    return build


def make_env_cfg(num_envs: int = 2, camera: tuple[int, int] | None = None, episode_s: float = 20.0,
                 decimation: int = 4) -> Any:
    """The env config; `camera=(height, width)` adds an ego camera sensor named `ego` on the torso."""
    from mjlab.asset_zoo.robots import get_g1_robot_cfg
    from mjlab.envs import ManagerBasedRlEnvCfg
    from mjlab.envs.mdp import joint_pos_rel, time_out
    from mjlab.envs.mdp.actions import JointPositionActionCfg
    from mjlab.managers.observation_manager import ObservationGroupCfg, ObservationTermCfg
    from mjlab.managers.termination_manager import TerminationTermCfg
    from mjlab.scene import SceneCfg
    from mjlab.terrains import TerrainEntityCfg

    robot = get_g1_robot_cfg()
    robot.spec_fn = _fixed_base(robot.spec_fn)
    sensors: tuple[Any, ...] = ()
    if camera is not None:
        from mjlab.sensor import CameraSensorCfg

        sensors = (CameraSensorCfg(name="ego", parent_body="robot/torso_link", pos=(0.25, 0.0, 0.45),
                                   quat=(0.6533, 0.2706, -0.2706, -0.6533), height=camera[0], width=camera[1],
                                   data_types=("rgb",), use_shadows=False, use_textures=True),)
    return ManagerBasedRlEnvCfg(
        decimation=decimation,
        scene=SceneCfg(terrain=TerrainEntityCfg(terrain_type="plane"), entities={"robot": robot},
                       sensors=sensors, num_envs=num_envs, extent=1.5),
        observations={"policy": ObservationGroupCfg({"joint_pos": ObservationTermCfg(func=joint_pos_rel)},
                                                    enable_corruption=False)},
        actions={"joint_pos": JointPositionActionCfg(entity_name="robot", actuator_names=(".*",), scale=1.0,
                                                     use_default_offset=False)},
        terminations={"time_out": TerminationTermCfg(func=time_out, time_out=True)},
        episode_length_s=episode_s,
    )
