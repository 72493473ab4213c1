"""Building an Isaac Lab 3.0 (or mjlab) manager-based environment, and reading its data as numpy.

Kept apart from the adapter because this is the part that follows Isaac Lab's releases:

- Isaac Lab 3.0 picks physics and renderers through config presets. `presets=("newton_mjwarp",)`
  on `device="cpu"` is kit-less: Newton physics on NVIDIA Warp (CPU kernels compiled on first use,
  cached in ~/.cache/warp), cameras from Newton's renderer, no Isaac Sim. On an install with Isaac
  Sim, presets such as `("physx",)` need Kit: `launch_simulation` starts it when the config asks
  for it (its `launcher_args`, e.g. `{"headless": True}`), and does nothing for kit-less configs.
- Assets come from `ISAACSIM_ASSET_ROOT`, which Isaac Lab reads once, when `isaaclab` is first
  imported: `asset_root` sets it before that import.
- 3.0 hands out simulator data as `ProxyArray`s (warp arrays with a `.torch` view) and
  quaternions as (x, y, z, w); mjlab and Isaac Lab 2.x use torch tensors and (w, x, y, z).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any

import numpy as np

FRAMEWORKS = ("isaaclab", "mjlab")
QUATERNION_ORDER = {"isaaclab": "xyzw", "mjlab": "wxyz"}


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor, an Isaac Lab `ProxyArray`, a warp array or an array-like, as a numpy array."""
    if hasattr(value, "torch") and not callable(value.torch):  # ProxyArray
        value = value.torch
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy") and callable(value.numpy):  # warp array
        return value.numpy()
    return np.asarray(value)


def resize_nearest(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of (H, W, C) to (size, size, C), without extra dependencies."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    rows = (np.arange(size) * h // size).clip(0, h - 1)
    cols = (np.arange(size) * w // size).clip(0, w - 1)
    return img[rows][:, cols]


def as_uint8_rgb(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) camera output as (N, H, W, 3) uint8 (float images in [0, 1] or [0, 255])."""
    if images.dtype != np.uint8:
        images = np.clip(images * (255.0 if images.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(images[..., :3])


def camera_rgb(sensor: Any) -> np.ndarray:
    """(N, H, W, 3) uint8 from an Isaac Lab camera sensor (`data.output["rgb"]`) or mjlab's (`data.rgb`)."""
    data = sensor.data
    value = data.rgb if hasattr(data, "rgb") else data.output["rgb"]
    return as_uint8_rgb(to_numpy(value))


def rgb_cameras(env: Any) -> list[str]:
    """The scene's sensors that render RGB (Isaac Lab cameras name it in their config's data types)."""
    return [name for name, sensor in env.scene.sensors.items()
            if "rgb" in (getattr(getattr(sensor, "cfg", None), "data_types", None) or ())]


def _load_attr(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def set_asset_root(path: str) -> None:
    """Point Isaac Lab's asset paths at a local folder; only possible before `isaaclab` is imported."""
    loaded = sys.modules.get("isaaclab.utils.assets")
    want = os.path.abspath(path)
    if loaded is not None and os.path.abspath(loaded.NUCLEUS_ASSET_ROOT_DIR) != want:
        raise ValueError(f"asset_root={path!r}, but Isaac Lab was already imported in this process with its assets "
                         f"at {loaded.NUCLEUS_ASSET_ROOT_DIR!r}; set it before the first Isaac Lab env is built")
    os.environ["ISAACSIM_ASSET_ROOT"] = want


def make_isaaclab_env(task: str, num_envs: int, device: str, presets: tuple[str, ...], env_cfg: str = "",
                      env_cfg_kwargs: dict[str, Any] | None = None,
                      launcher_args: dict[str, Any] | None = None) -> tuple[Any, contextlib.ExitStack]:
    """(env, runtime): an Isaac Lab 3.0 env built from the registered `task` (or from the config factory
    `env_cfg="module:function"`, called with `num_envs` and `env_cfg_kwargs`); closing `runtime`
    stops Kit where `launch_simulation` started it."""
    try:
        import gymnasium as gym
        import isaaclab_tasks  # noqa: F401  (registers the Isaac-* task ids)
        from isaaclab.app.sim_launcher import launch_simulation
        from isaaclab_tasks.utils import parse_env_cfg
        from isaaclab_tasks.utils.hydra import resolve_presets
    except ImportError as e:
        raise ImportError(f"framework='isaaclab' needs Isaac Lab 3.0 ({e}): run scripts/install_isaaclab.sh and use "
                          ".venv-isaaclab/bin/python (docs/INTEGRATIONS.md, 'Isaac Lab')") from e
    if env_cfg:
        cfg = resolve_presets(_load_attr(env_cfg)(num_envs=num_envs, **(env_cfg_kwargs or {})), selected=presets)
        cfg.sim.device = device
    else:
        overrides = [f"presets={','.join(presets)}"] if presets else []
        cfg = parse_env_cfg(task, device=device, num_envs=num_envs, overrides=overrides)
    cfg.scene.num_envs = num_envs
    runtime = contextlib.ExitStack()
    runtime.enter_context(launch_simulation(cfg, dict(launcher_args or {})))
    try:
        if env_cfg and task not in gym.registry:  # a config of one's own, not registered as a gym id
            from isaaclab.envs import ManagerBasedRLEnv

            env = ManagerBasedRLEnv(cfg=cfg)
        else:
            env = gym.make(task, cfg=cfg).unwrapped
    except BaseException:
        runtime.close()
        raise
    if not hasattr(env, "termination_manager"):
        runtime.close()
        raise ValueError(f"{task} is a direct-workflow env ({type(env).__name__}): the isaaclab adapter drives "
                         "manager-based envs (per-env seeded resets, termination terms)")
    return env, runtime


def make_mjlab_env(task: str, num_envs: int, device: str, env_cfg: str = "",
                   env_cfg_kwargs: dict[str, Any] | None = None) -> tuple[Any, contextlib.ExitStack]:
    """(env, runtime): mjlab's Isaac Lab-style `ManagerBasedRlEnv` on MuJoCo-Warp."""
    from mjlab.envs import ManagerBasedRlEnv

    if env_cfg:
        cfg = _load_attr(env_cfg)(num_envs=num_envs, **(env_cfg_kwargs or {}))
    else:
        import mjlab.tasks  # noqa: F401  (registers the Mjlab-* task ids)
        from mjlab.tasks.registry import load_env_cfg

        cfg = load_env_cfg(task, play=True)
    cfg.scene.num_envs = num_envs
    return ManagerBasedRlEnv(cfg, device=device), contextlib.ExitStack()


def make_env(framework: str, task: str, num_envs: int, device: str, presets: tuple[str, ...] = ("newton_mjwarp",),
             asset_root: str = "", env_cfg: str = "", env_cfg_kwargs: dict[str, Any] | None = None,
             launcher_args: dict[str, Any] | None = None) -> tuple[Any, contextlib.ExitStack]:
    """(env, runtime) for `framework` ('isaaclab': Isaac Lab 3.0; 'mjlab'); close `runtime` after the env."""
    if framework == "isaaclab":
        if asset_root:
            set_asset_root(asset_root)
        return make_isaaclab_env(task, num_envs, device, tuple(presets), env_cfg, env_cfg_kwargs, launcher_args)
    if framework == "mjlab":
        return make_mjlab_env(task, num_envs, device, env_cfg, env_cfg_kwargs)
    raise ValueError(f"framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
