"""`gym`: any gymnasium environment id, evaluated with a declarative key mapping and no code.

    rolloutq eval --task gym --task-options '{"env_id": "InvertedPendulum-v5",
        "observations": {"": "state.obs"}, "render_key": "video.ego", "actions": {"action": 1}}'

Options:
- `env_id`, `env_kwargs`: passed to `gymnasium.make` (e.g. `render_mode`, `width`, `height`).
  `import_modules` names packages to import first that register their envs (`gym_aloha`, ...).
- `observations`: env observation path -> rolloutq key. `""` is the whole observation (Box spaces);
  dotted paths reach into Dict spaces (`pixels.top`). uint8 (H, W, 3) arrays go out as video
  (1, 1, H, W, 3); anything else is flattened to float32 state (1, 1, D). Default: the whole Box
  observation as `state.obs`, or every Dict entry as `video.<k>` / `state.<k>`.
- `render_key`: rolloutq key for `env.render()` frames (needs `render_mode="rgb_array"`).
- `actions`: chunk key -> dims, concatenated in order into the env action. Default `{"action": D}`.
  Discrete spaces take the rounded first value. Box actions are clipped to the space's bounds.
- `instruction`, `text_key`: the language field sent with every observation.
- `success_key`: the `info` entry that marks success (default `is_success`, also `success`);
  `success_on_terminate`: count a termination (not a truncation) as success instead.
- `max_steps`: step cap (default: the env's own time limit, else 1000).

`Adapter` is one environment (for the per-slot `SimWorker`); `VectorAdapter` wraps
`gymnasium.make_vec` (`num_envs`, `vectorization_mode`) for `rolloutq.sim_workers.vector.run_vector`.

Videos: when the env renders to images (`render_key`, or `render_mode="rgb_array"` in `env_kwargs`),
both record the first `video_episodes` episodes of a run. `video_state` renders the env (a sub-env
of the vector env) after the reset and after each step of a recorded episode and keeps a copy of
that (H, W, 3) uint8 frame (gymnasium has no cheaper copy of a scene); `video_frame` returns it.
An env that does not render to images records no video.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from rolloutq.sim_workers.base import Chunk, Obs, SimAdapter, StepResult, TaskInfo
from rolloutq.sim_workers.vector import VectorSimAdapter

TEXT_KEY = "annotation.human.task_description"


def _gym():
    try:
        import gymnasium
    except ImportError:
        raise ImportError("the gym adapter needs gymnasium: pip install 'gymnasium>=1.1'") from None
    return gymnasium


def _get(obs: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        obs = obs[part]
    return obs


def _is_image(a: np.ndarray) -> bool:
    return a.dtype == np.uint8 and a.ndim == 3 and a.shape[-1] in (1, 3, 4)


class _Mapping:
    """The declarative part shared by the single and the vector adapter."""

    def __init__(self, obs_space: Any, act_space: Any, observations: dict[str, str] | None,
                 actions: dict[str, int] | None, render_key: str, instruction: str, text_key: str,
                 success_key: str, success_on_terminate: bool) -> None:
        gym = _gym()
        self.observations = observations or self._default_observations(obs_space, gym)
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        self.action_dim = 1 if self.discrete else int(np.prod(act_space.shape))
        self.act_space = act_space
        self.actions = actions or {"action": self.action_dim}
        if sum(self.actions.values()) != self.action_dim:
            raise ValueError(f"actions map {sum(self.actions.values())} dims, the env takes {self.action_dim}")
        self.render_key = render_key
        self.instruction = instruction
        self.text_key = text_key
        self.success_keys = [success_key] if success_key else ["is_success", "success"]
        self.success_on_terminate = success_on_terminate

    @staticmethod
    def _default_observations(space: Any, gym: Any) -> dict[str, str]:
        if isinstance(space, gym.spaces.Dict):
            out = {}
            for k, sub in space.spaces.items():
                image = getattr(sub, "dtype", None) == np.uint8 and len(getattr(sub, "shape", ()) or ()) == 3
                out[k] = f"video.{k}" if image else f"state.{k}"
            return out
        return {"": "state.obs"}

    def build(self, raw: Any, frame: np.ndarray | None) -> Obs:
        obs: Obs = {}
        for path, key in self.observations.items():
            a = np.asarray(_get(raw, path))
            obs[key] = a[None, None].copy() if _is_image(a) else a.astype(np.float32).reshape(1, 1, -1)
        if self.render_key and frame is not None:
            obs[self.render_key] = np.ascontiguousarray(frame)[None, None]
        if self.text_key and self.instruction:
            obs[self.text_key] = [[self.instruction]]
        return obs

    def action(self, chunk: Chunk, t: int) -> np.ndarray:
        a = np.concatenate([np.asarray(chunk[k], np.float32)[0, t].reshape(-1)[:d] for k, d in self.actions.items()])
        if self.discrete:
            return np.asarray(int(np.clip(np.rint(a[0]), 0, self.act_space.n - 1)))
        a = a.reshape(self.act_space.shape)
        if np.all(np.isfinite(self.act_space.low)) or np.all(np.isfinite(self.act_space.high)):
            a = np.clip(a, self.act_space.low, self.act_space.high)
        return a.astype(self.act_space.dtype, copy=False)

    def idle(self) -> np.ndarray:
        if self.discrete:
            return np.asarray(0)
        low, high = self.act_space.low, self.act_space.high
        mid = np.where(np.isfinite(low) & np.isfinite(high), (low + high) / 2, 0.0)
        return mid.astype(self.act_space.dtype)

    def success(self, info: dict[str, Any], terminated: bool, truncated: bool) -> bool:
        for k in self.success_keys:
            if k in info:
                return bool(np.asarray(info[k]).any())
        return bool(self.success_on_terminate and terminated and not truncated)


def _import(modules: list[str] | None) -> None:
    for m in modules or []:
        importlib.import_module(m)


class Adapter(SimAdapter):
    def __init__(self, env_id: str = "Pendulum-v1", env_kwargs: dict[str, Any] | None = None,
                 observations: dict[str, str] | None = None, actions: dict[str, int] | None = None,
                 render_key: str = "", instruction: str = "", text_key: str = TEXT_KEY, success_key: str = "",
                 success_on_terminate: bool = False, max_steps: int | None = None,
                 import_modules: list[str] | None = None, **_: Any) -> None:
        gym = _gym()
        _import(import_modules)
        kwargs = dict(env_kwargs or {})
        if render_key:
            kwargs.setdefault("render_mode", "rgb_array")
        self.env = gym.make(env_id, **kwargs)
        spec_cap = getattr(self.env.spec, "max_episode_steps", None)
        self.max_steps = int(max_steps or spec_cap or 1000)
        self.map = _Mapping(self.env.observation_space, self.env.action_space, observations, actions, render_key,
                            instruction or env_id, text_key, success_key, success_on_terminate)
        self.info = TaskInfo(name=f"gym:{env_id}", instruction=self.map.instruction, max_steps=self.max_steps,
                             description=f"gymnasium environment {env_id}", fps=_fps(self.env))
        self._video = _renders_images(self.env)
        self._raw: Any = None
        self._frame: np.ndarray | None = None
        self._steps = 0

    def reset(self, seed: int) -> None:
        self._raw, _ = self.env.reset(seed=int(seed))
        self._steps = 0

    def observe(self) -> Obs:
        self._frame = np.asarray(self.env.render()) if self.map.render_key else None
        return self.map.build(self._raw, self._frame)

    def step(self, action: np.ndarray) -> StepResult:
        self._raw, reward, terminated, truncated, info = self.env.step(action)
        self._steps += 1
        success = self.map.success(info, terminated, truncated)
        done = bool(terminated or truncated or success or self._steps >= self.max_steps)
        return StepResult(reward=float(reward), done=done, success=success)

    def action_from_chunk(self, chunk: Chunk, t: int) -> np.ndarray:
        return self.map.action(chunk, t)

    def frame(self) -> np.ndarray | None:
        return self._frame

    def video_state(self) -> np.ndarray | None:
        """The env rendered after each step of a recorded episode (gymnasium offers no cheaper copy of a
        scene); None when it does not render to images: no video."""
        return np.asarray(self.env.render()).copy() if self._video else None

    def close(self) -> None:
        self.env.close()


class VectorAdapter(VectorSimAdapter):
    """`gymnasium.make_vec` with auto-reset off: each env is reset by the runner, from its own seed."""

    vectorize_by_default = False

    def __init__(self, env_id: str = "Pendulum-v1", num_envs: int = 4, vectorization_mode: str = "sync",
                 env_kwargs: dict[str, Any] | None = None, observations: dict[str, str] | None = None,
                 actions: dict[str, int] | None = None, render_key: str = "", instruction: str = "",
                 text_key: str = TEXT_KEY, success_key: str = "", success_on_terminate: bool = False,
                 max_steps: int | None = None, import_modules: list[str] | None = None, **_: Any) -> None:
        gym = _gym()
        _import(import_modules)
        kwargs = dict(env_kwargs or {})
        if render_key:
            kwargs.setdefault("render_mode", "rgb_array")
        self.venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode,
                                 vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.DISABLED}, **kwargs)
        self.num_envs = num_envs
        spec_cap = getattr(gym.spec(env_id), "max_episode_steps", None)
        self.max_steps = int(max_steps or spec_cap or 1000)
        self.map = _Mapping(self.venv.single_observation_space, self.venv.single_action_space, observations,
                            actions, render_key, instruction or env_id, text_key, success_key,
                            success_on_terminate)
        self.info = TaskInfo(name=f"gym:{env_id}", instruction=self.map.instruction, max_steps=self.max_steps,
                             description=f"gymnasium vector environment {env_id} x{num_envs}", fps=_fps(self.venv))
        self._video = _renders_images(self.venv)
        self._raw: Any = None
        self._steps = np.zeros(num_envs, np.int64)
        self._ended = np.ones(num_envs, bool)
        self._frames: dict[int, np.ndarray] = {}

    def _reset_mask(self, mask: np.ndarray, seeds: list[int | None]) -> None:
        raw, _ = self.venv.reset(seed=seeds, options={"reset_mask": mask})
        if self._raw is None:
            self._raw = raw
        else:
            self._merge(raw, mask)
        self._steps[mask] = 0
        self._ended[mask] = False

    def _merge(self, raw: Any, mask: np.ndarray) -> None:
        if isinstance(raw, dict):
            for k in raw:
                self._raw[k][mask] = raw[k][mask]
        else:
            self._raw[mask] = raw[mask]

    def reset(self, env_ids: list[int], seeds: list[int]) -> None:
        mask = np.zeros(self.num_envs, bool)
        mask[env_ids] = True
        by_env: list[int | None] = [None] * self.num_envs
        for i, s in zip(env_ids, seeds, strict=True):
            by_env[i] = int(s)
        if self._raw is None:  # first reset: all envs, seeded where given
            mask[:] = True
        self._reset_mask(mask, by_env)

    def _render(self, i: int) -> np.ndarray:
        envs = getattr(self.venv, "envs", None)
        if envs is not None:
            return np.asarray(envs[i].render())
        return np.asarray(self.venv.call("render")[i])

    def observe(self, env_ids: list[int]) -> list[Obs]:
        out = []
        for i in env_ids:
            frame = self._render(i) if self.map.render_key else None
            if frame is not None:
                self._frames[i] = frame
            out.append(self.map.build(_row(self._raw, i), frame))
        return out

    def step(self, actions: np.ndarray) -> list[StepResult]:
        if self._ended.any():  # envs with auto-reset off must be reset before they step again
            self._reset_mask(self._ended.copy(), [None] * self.num_envs)
        space = self.map.act_space
        if self.map.discrete:
            actions = np.rint(actions[:, 0]).astype(np.int64)
        else:
            actions = actions.reshape(self.num_envs, *space.shape).astype(space.dtype, copy=False)
        self._raw, rewards, terminated, truncated, info = self.venv.step(actions)
        self._steps += 1
        results = []
        for i in range(self.num_envs):
            sub = {k: v[i] for k, v in info.items() if not k.startswith("_") and hasattr(v, "__len__")
                   and len(v) == self.num_envs and (f"_{k}" not in info or info[f"_{k}"][i])}
            success = self.map.success(sub, bool(terminated[i]), bool(truncated[i]))
            done = bool(terminated[i] or truncated[i] or success or self._steps[i] >= self.max_steps)
            self._ended[i] = done
            results.append(StepResult(reward=float(rewards[i]), done=done, success=success))
        return results

    def action_from_chunk(self, env_id: int, chunk: Chunk, t: int) -> np.ndarray:
        return np.asarray(self.map.action(chunk, t), np.float32).reshape(-1)

    def idle_action(self, env_id: int) -> np.ndarray:
        return np.asarray(self.map.idle(), np.float32).reshape(-1)

    def frame(self, env_id: int) -> np.ndarray | None:
        return self._frames.get(env_id)

    def video_state(self, env_id: int) -> np.ndarray | None:
        """Env `env_id` rendered after each step of a recorded episode; None when it does not render to
        images: no video."""
        return self._render(env_id).copy() if self._video else None

    def video_frame(self, env_id: int, state: np.ndarray | None) -> np.ndarray | None:
        return state

    def close(self) -> None:
        self.venv.close()


def _fps(env: Any) -> float:
    """The env's own frame rate (`metadata["render_fps"]`), for its videos; 10 when it names none."""
    fps = (getattr(env, "metadata", None) or {}).get("render_fps")
    return float(fps) if fps else 10.0


def _renders_images(env: Any) -> bool:
    """Whether `env.render()` returns images (`render_mode="rgb_array"`), from which its videos are made."""
    return getattr(env, "render_mode", None) == "rgb_array"


def _row(raw: Any, i: int) -> Any:
    """Env `i`'s observation out of a batched (possibly nested-dict) vector observation."""
    if isinstance(raw, dict):
        return {k: _row(v, i) for k, v in raw.items()}
    return raw[i]
