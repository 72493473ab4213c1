"""`lerobot` backend: any LeRobot policy saved with `save_pretrained` (ACT, Diffusion, ...).

The policy is loaded from a local directory (`config.json` + `model.safetensors`, and the
`policy_preprocessor.json` / `policy_postprocessor.json` pipelines with their normalisation stats
when the checkpoint has them). A batch of requests from different rollouts becomes ONE forward pass
(`predict_action_chunk` on the stacked batch), and the result is split back per request.

Feature names are mapped declaratively, so a simulator keeps its own keys:

- `inputs`: LeRobot input feature -> rolloutq observation key, or a list / `{key: dim}` map of keys
  concatenated along the last axis (e.g. `observation.state` <- `state.left_arm` + `state.right_arm`).
  Default: `observation.images.<cam>` <- `video.<cam>`, `observation.state` <- `state.state`,
  `observation.environment_state` <- `state.environment`.
- `outputs`: chunk key -> action dims, consumed in order from LeRobot's action vector (an int) or an
  explicit `[start, stop)` slice. Default: `{"action": <full action dim>}`.
- `task_key`: the rolloutq text key passed as LeRobot's `task` (language-conditioned policies).

Images arrive as uint8 (1, T, H, W, 3) or (1, H, W, 3) and go to the policy as float (B, 3, H, W)
in [0, 1] (last frame; resized when the checkpoint expects another size). States arrive as
(1, T, D) or (1, D) (last step). Policies that keep an observation history in queues (Diffusion,
VQ-BeT with `n_obs_steps` > 1) are stateless here: the queues are refilled from the request's own
time axis on every call, so requests of different rollouts never share history.

LeRobot 0.4.x (the last release for Python 3.11) pins torch < 2.11; it imports and runs with torch
2.13 when installed with `--no-deps` plus the modules its import chain needs (see
docs/INTEGRATIONS.md). 0.5+/0.6 need Python >= 3.12.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from rolloutq.policy_workers.base import Chunk, Obs, PolicyBackend, PolicyMetadata
from rolloutq.policy_workers.batching import flatten, text_of
from rolloutq.policy_workers.errors import BackendLoadError

_INSTALL = (
    "LeRobot is not importable in this interpreter. Python 3.11: `pip install --no-deps lerobot==0.4.4` plus "
    "the modules listed in docs/INTEGRATIONS.md (LeRobot section); Python >= 3.12: `pip install lerobot`."
)
_IMAGE_PREFIX = "observation.images."


def _torchvision_without_ops() -> None:
    """Make `import torchvision` work where its compiled ops cannot load.

    PyPI's Linux torchvision wheels are CUDA builds; next to a CPU-only torch their `_C` extension
    fails to load and torchvision's import then dies registering fake kernels for `nms`/`qnms`.
    LeRobot only needs torchvision's Python parts (ResNet backbones, FrozenBatchNorm2d), so where
    the extension is unloadable we declare those two operator schemas (no kernels) first. Nothing
    happens when the extension loads, or torchvision is already imported, or absent.
    """
    import importlib.util
    import sys

    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    folder = Path(next(iter(spec.submodule_search_locations)))
    libs = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))
    if libs:
        try:
            torch.ops.load_library(str(libs[0]))
            return
        except (OSError, RuntimeError):
            pass
    global _TV_SHIM
    if _TV_SHIM is None:
        _TV_SHIM = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _TV_SHIM.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


_TV_SHIM: Any = None


def import_lerobot() -> dict[str, Any]:
    """LeRobot's loading entry points, across 0.4.x (Python 3.11) and later releases."""
    _torchvision_without_ops()
    try:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class
    except ImportError as e:
        raise BackendLoadError(f"{_INSTALL} ({type(e).__name__}: {e})") from None
    try:
        from lerobot.policies.factory import make_pre_post_processors
    except ImportError:  # releases before the processor pipelines normalised inside the policy
        make_pre_post_processors = None
    try:
        from lerobot.policies.utils import populate_queues
    except ImportError:
        populate_queues = None
    return {"PreTrainedConfig": PreTrainedConfig, "get_policy_class": get_policy_class,
            "make_pre_post_processors": make_pre_post_processors, "populate_queues": populate_queues}


def _default_inputs(features: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in features:
        if name.startswith(_IMAGE_PREFIX):
            out[name] = "video." + name[len(_IMAGE_PREFIX):]
        elif name == "observation.state":
            out[name] = "state.state"
        elif name == "observation.environment_state":
            out[name] = "state.environment"
        else:
            out[name] = name
    return out


def _slices(outputs: dict[str, Any], action_dim: int) -> dict[str, tuple[int, int]]:
    slices: dict[str, tuple[int, int]] = {}
    start = 0
    for key, spec in outputs.items():
        if isinstance(spec, (list, tuple)):
            lo, hi = int(spec[0]), int(spec[1])
        else:
            lo, hi = start, start + int(spec)
        if not 0 <= lo < hi <= action_dim:
            raise BackendLoadError(f"output {key!r} takes action dims [{lo}, {hi}) "
                                   f"but the policy's action has {action_dim}")
        slices[key] = (lo, hi)
        start = hi
    return slices


class Backend(PolicyBackend):
    def __init__(self, path: str = "", inputs: dict[str, Any] | None = None, outputs: dict[str, Any] | None = None,
                 task_key: str = "annotation.human.task_description", device: str = "cpu",
                 action_horizon: int | None = None, use_processors: bool | None = None,
                 model_id: str = "", **_: Any) -> None:
        if not path:
            raise BackendLoadError("lerobot backend needs `path`: a local directory written by `save_pretrained`")
        self.path = Path(os.path.expanduser(path))
        self.inputs_option = inputs
        self.outputs_option = outputs
        self.task_key = task_key
        self.device = device
        self.action_horizon_option = action_horizon
        self.use_processors = use_processors
        self.model_id = model_id or f"lerobot:{self.path.name}"
        self.policy: Any = None
        self.pre: Any = None
        self.post: Any = None
        self._lr: dict[str, Any] = {}

    # -- loading ----------------------------------------------------------------------------------

    def load(self) -> None:
        if not (self.path / "config.json").is_file():
            raise BackendLoadError(f"{self.path} has no config.json: expected a directory written by save_pretrained")
        self._lr = lr = import_lerobot()
        cfg = lr["PreTrainedConfig"].from_pretrained(str(self.path))
        cfg.device = self.device
        self.cfg = cfg
        self.policy = lr["get_policy_class"](cfg.type).from_pretrained(str(self.path), config=cfg)
        self.policy.to(self.device).eval()
        has_pipelines = (self.path / "policy_preprocessor.json").is_file()
        use = has_pipelines if self.use_processors is None else self.use_processors
        if use:
            if lr["make_pre_post_processors"] is None or not has_pipelines:
                raise BackendLoadError(f"use_processors=True but {self.path} has no policy_preprocessor.json "
                                       "or this LeRobot has no processor pipelines")
            try:  # the saved pipelines name the training device: move their device step to ours
                self.pre, self.post = lr["make_pre_post_processors"](
                    cfg, pretrained_path=str(self.path),
                    preprocessor_overrides={"device_processor": {"device": self.device}})
            except (KeyError, ValueError):  # a pipeline without a device step rejects that override
                self.pre, self.post = lr["make_pre_post_processors"](cfg, pretrained_path=str(self.path))
        self.features = {k: tuple(v.shape) for k, v in cfg.input_features.items()}
        self.action_dim = int(cfg.output_features["action"].shape[0])
        self.inputs = self._resolve_inputs(self.inputs_option or _default_inputs(self.features))
        self.slices = _slices(self.outputs_option or {"action": self.action_dim}, self.action_dim)
        self.n_obs_steps = int(getattr(cfg, "n_obs_steps", 1) or 1)
        self.n_action_steps = int(getattr(cfg, "n_action_steps", 1) or 1)
        self.parameters = sum(p.numel() for p in self.policy.parameters())
        self.chunk_length = 1 << 30
        # One warm-up pass on a blank observation: checks the mapping end to end and tells how many
        # steps `predict_action_chunk` returns (ACT: chunk_size; Diffusion: n_action_steps).
        self.chunk_length = next(iter(self.infer([self._blank()])[0].values())).shape[1]

    def _blank(self) -> Obs:
        obs: Obs = {}
        for feature, keys in self.inputs.items():
            for key, dim in keys.items():
                if feature.startswith(_IMAGE_PREFIX):
                    c, h, w = self.features[feature]
                    obs[key] = np.zeros((1, 1, h, w, c), np.uint8)
                else:
                    obs[key] = np.zeros((1, 1, dim if dim is not None else self.features[feature][-1]), np.float32)
        return obs

    def _resolve_inputs(self, mapping: dict[str, Any]) -> dict[str, dict[str, int | None]]:
        """LeRobot feature -> ordered {rolloutq key: dims or None}."""
        resolved: dict[str, dict[str, int | None]] = {}
        unknown = [k for k in mapping if k not in self.features]
        if unknown:
            raise BackendLoadError(f"inputs name features the policy does not have: {unknown}; "
                                   f"it has {sorted(self.features)}")
        missing = [k for k in self.features if k not in mapping]
        if missing:
            raise BackendLoadError(f"inputs must map every policy input feature; missing {missing}")
        for feature, spec in mapping.items():
            if isinstance(spec, str):
                keys: dict[str, int | None] = {spec: None}
            elif isinstance(spec, dict):
                keys = {k: int(v) for k, v in spec.items()}
            else:
                keys = {k: None for k in spec}
            if feature.startswith(_IMAGE_PREFIX) and len(keys) != 1:
                raise BackendLoadError(f"image feature {feature!r} must map to exactly one observation key")
            if len(keys) == 1 and not feature.startswith(_IMAGE_PREFIX):
                only = next(iter(keys))
                keys[only] = keys[only] or self.features[feature][-1]
            dims = [d for d in keys.values() if d is not None]
            if len(dims) == len(keys) and not feature.startswith(_IMAGE_PREFIX) \
                    and sum(dims) != self.features[feature][-1]:
                raise BackendLoadError(f"{feature!r} has {self.features[feature][-1]} dims "
                                       f"but its keys add up to {sum(dims)}")
            resolved[feature] = keys
        return resolved

    def metadata(self) -> PolicyMetadata:
        schema: dict[str, dict[str, Any]] = {}
        for feature, keys in self.inputs.items():
            for key, dim in keys.items():
                if feature.startswith(_IMAGE_PREFIX):
                    schema[key] = {"dtype": "uint8", "shape": [1, -1, -1, -1, 3]}
                else:
                    schema[key] = {"dtype": "float32", "shape": [1, -1, dim if dim is not None else -1]}
        if self.task_key:
            schema[self.task_key] = {"kind": "text", "optional": True}
        return PolicyMetadata(
            model_id=self.model_id,
            observation_schema=schema,
            action_schema={k: {"dtype": "float32", "shape": [1, self.chunk_length, hi - lo]}
                           for k, (lo, hi) in self.slices.items()},
            chunk_length=self.chunk_length,
            action_horizon=int(self.action_horizon_option or min(self.n_action_steps, self.chunk_length)),
            device=self.device,
            parameters=int(self.parameters),
            description=f"LeRobot {self.cfg.type} policy from {self.path}",
            extra={"lerobot_type": self.cfg.type, "inputs": {f: list(k) for f, k in self.inputs.items()},
                   "n_obs_steps": self.n_obs_steps, "processors": self.pre is not None},
        )

    # -- inference --------------------------------------------------------------------------------

    def _history(self, value: np.ndarray, image: bool) -> np.ndarray:
        """(B, T, ...) with T = n_obs_steps: the last steps of the request's time axis, first one repeated."""
        ndim = 3 if image else 1  # per-item dims without batch and time: (H, W, 3) or (D,)
        if value.ndim == ndim + 1:
            value = value[:, None]
        steps = value.shape[1]
        if steps >= self.n_obs_steps:
            return value[:, steps - self.n_obs_steps:]
        pad = np.repeat(value[:, :1], self.n_obs_steps - steps, axis=1)
        return np.concatenate([pad, value], axis=1)

    def _tensors(self, batch: list[Obs]) -> dict[str, Any]:
        """LeRobot batch with a time axis: images float (B, T, 3, H, W) in [0, 1], states (B, T, D)."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        flats = [flatten(o) for o in batch]
        out: dict[str, Any] = {}
        for feature, keys in self.inputs.items():
            image = feature.startswith(_IMAGE_PREFIX)
            parts = []
            for key in keys:  # align each request's time axis to n_obs_steps before stacking
                parts.append(np.concatenate([self._history(np.asarray(f[key]), image) for f in flats], axis=0))
            arr = parts[0] if image else np.concatenate([p.astype(np.float32, copy=False) for p in parts], axis=-1)
            t = torch.from_numpy(np.ascontiguousarray(arr))
            if image:
                b, steps = t.shape[:2]
                t = t.reshape(b * steps, *t.shape[2:]).permute(0, 3, 1, 2).float().div_(255.0)
                want = self.features[feature][-2:]
                if tuple(t.shape[-2:]) != tuple(want):
                    t = F.interpolate(t, size=want, mode="bilinear", align_corners=False)
                t = t.reshape(b, steps, *t.shape[1:])
            out[feature] = t.to(self.device)
        return out

    def infer(self, batch: list[Obs]) -> list[Chunk]:
        import torch

        timed = self._tensors(batch)
        last = {k: v[:, -1] for k, v in timed.items()}
        if self.task_key:
            last["task"] = [text_of(flatten(o).get(self.task_key, "")) for o in batch]
        with torch.inference_mode():
            if self.pre is not None:
                last = self.pre(last)
            if hasattr(self.policy, "_queues") and self._lr.get("populate_queues") is not None:
                actions = self._infer_queued(timed, last)
            else:
                actions = self.policy.predict_action_chunk(last)
            if self.post is not None:
                actions = self.post(actions)
        actions = actions.detach().float().cpu().numpy()
        if actions.ndim == 2:
            actions = actions[:, None]
        actions = actions[:, :self.chunk_length]
        return [{k: np.ascontiguousarray(actions[i:i + 1, :, lo:hi]) for k, (lo, hi) in self.slices.items()}
                for i in range(len(batch))]

    def _infer_queued(self, timed: dict[str, Any], last: dict[str, Any]) -> Any:
        """Policies with observation queues: refill them from this batch's own history, then predict."""
        import torch

        policy = self.policy
        policy.reset()
        steps = self.n_obs_steps
        for s in range(steps):
            step = {k: (v[:, s] if s < steps - 1 else last[k]) for k, v in timed.items()}
            if self.pre is not None and s < steps - 1:
                step = self.pre({**step, "task": last.get("task", [])})
            if getattr(policy.config, "image_features", None):
                step["observation.images"] = torch.stack([step[k] for k in policy.config.image_features], dim=-4)
            self._lr["populate_queues"](policy._queues, step)
        return policy.predict_action_chunk(step)

