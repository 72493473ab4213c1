"""NVIDIA GR00T N1.x behind the batched backend interface.

Two modes:

* `gr00t` wraps NVIDIA's `gr00t` package (Isaac-GR00T): `Gr00tPolicy(embodiment_tag, model_path,
  device=...)` and its `get_action(obs) -> (action, info)` on batched numpy inputs (video
  (B, T, H, W, 3) uint8, state (B, T, D) float32, language (B, 1) lists of strings; actions
  (B, horizon, D)). This is the mode for evaluating a real checkpoint such as GR00T-N1.7-3B.
* `n17-random` builds the GR00T N1.7 architecture (Cosmos-Reason2-2B / Qwen3-VL backbone cut at
  layer 16 + the 32-layer flow-matching DiT action head, 3.1 B parameters) with RANDOM weights
  through LeRobot's `policies/groot` modeling code, offline. It exists to measure the serving path
  at the real model's cost; its outputs are noise and are labelled "GR00T N1.7 network, random
  weights" everywhere (metadata, every chunk, every `info`). Never present them as a policy.

The `embodiment` option picks the observation and action layout (`_gr00t_layout.EMBODIMENTS`):
`real_g1` (the default, the G1 tasks' REAL_G1 schema) or `libero` (the libero task's two cameras,
Panda proprio state and 7-D `action`), so `--task libero --backend gr00t --backend-option
embodiment=libero` passes the pre-flight schema check and serves the libero task directly.

Either way, the requests of one micro-batch (from different rollouts) become ONE `get_action`
call: observations are stacked along B, the action chunk is split back per request. Observations
may come as the nested modality dict of the reference design (`{"video": {"ego_view": ...},
"state": {...}, "language": {"annotation.human.task_description": [["..."]]}}`) or as flat dotted
keys (`video.ego_view`, `state.left_arm`, `annotation.human.task_description`); a batch may mix
both forms and different instructions.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from rolloutq.policy_workers.backends._gr00t_layout import (
    EMBODIMENTS,
    ModalitySpec,
    VideoRows,
    check_nested,
    split,
    stack,
    synthetic_observation,
    to_nested,
)
from rolloutq.policy_workers.base import Chunk, Obs, PolicyBackend, PolicyMetadata
from rolloutq.policy_workers.errors import BackendLoadError

RANDOM_LABEL = "GR00T N1.7 network, random weights"
"""Said by the metadata, every chunk and every `info` of the `n17-random` mode."""

INSTALL_HINT = (
    "the `gr00t` package (NVIDIA Isaac-GR00T) is not installed in this Python. Install it on the "
    "policy replica's image: `git clone https://github.com/NVIDIA/Isaac-GR00T && cd Isaac-GR00T && "
    "pip install -e .` (Python 3.10+, CUDA PyTorch; see that repository's README for the "
    "flash-attn wheel), or use the `n17-random` mode to measure serving cost without weights. "
    "Gated checkpoints also need HF_TOKEN in the replica's environment (Gr00tSettings.env_vars)."
)

# Embodiment tag values as Isaac-GR00T's EmbodimentTag enum spells them; ids as LeRobot 0.6.1's
# N1.7 embodiment mapping has them (used only by the random-weight network's per-embodiment layers).
EMBODIMENT_TAGS = {"REAL_G1": "real_g1_relative_eef_relative_joints", "NEW_EMBODIMENT": "new_embodiment"}
N17_EMBODIMENT_IDS = {"real_g1_relative_eef_relative_joints": 25, "new_embodiment": 10}


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------


@dataclass
class Gr00tSettings:
    """Backend settings, built at the CLI / deployment edge.

    `env_vars` (e.g. HF_TOKEN for the gated backbone) go to replicas through Ray's `runtime_env`;
    a 3B checkpoint loads in ~30 s, past Ray Serve's 30 s default health check, hence 300 s.
    """

    mode: str = "gr00t"  # "gr00t" | "n17-random"
    model_path: str | None = None  # local checkpoint dir or hub id, e.g. "nvidia/GR00T-N1.7-3B"
    embodiment: str = "real_g1"
    """The observation and action layout served: "real_g1" (REAL_G1 schema) or "libero" (the libero task's)."""
    embodiment_tag: str = ""  # enum name or value; "" = the layout's (REAL_G1; NEW_EMBODIMENT for libero)
    device: str = "cuda"
    denoising_steps: int = 4
    action_horizon: int = 8  # steps of the 40-step chunk a simulator executes before re-querying
    strict: bool = False  # Gr00tPolicy input/output validation (costs time per call)
    seed: int = 0
    health_check_timeout_s: float = 300.0
    env_vars: dict[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = ("HF_TOKEN", "HF_HOME", "HUGGINGFACE_HUB_CACHE")
    action_prefix: str | None = None
    """Prefix of the action keys sent back; None = the layout's ("action." for real_g1, none for libero)."""
    warmup_batch_sizes: tuple[int, ...] = ()
    """Run synthetic batches of these sizes at load, so first-call costs (kernel selection, allocator
    growth) are paid before serving instead of by the first rollouts."""
    cuda_graph_batch_sizes: tuple[int, ...] = ()
    """n17-random: capture CUDA graphs for these batch sizes; a batch pads up to the next captured
    size, larger batches run eagerly (`_n17_graphs`)."""
    cuda_graph_scope: str = "forward"
    """n17-random: "forward" captures the whole get_action (checked against the eager model at load,
    falling back to "head" if it disagrees); "head" captures only the action head."""
    cuda_graph_tokens: int = 160
    """n17-random: prompts are left-padded to this many tokens for the graphs; longer ones run eagerly."""
    register_shared_frames: bool = True
    """n17-random on a GPU: register the simulators' shared-memory segments with CUDA (read-only,
    once each) so the captured forward copies each request's frames straight from them instead of
    assembling the batch in one buffer first (`_mapped_frames.MappedFrames`)."""
    batched_vision_attention: bool = True
    """n17-random: run the vision tower's attention over all images in one call instead of
    transformers' per-image loop (checked against it at load; `_vision_attention`)."""
    policy_factory: str | None = None
    """`module:callable` taking the settings and returning a Gr00tPolicy-like object (custom wrappers,
    test doubles); overrides `mode`'s loader."""

    def __post_init__(self) -> None:
        name = str(self.embodiment).lower().replace("-", "_")
        if name not in EMBODIMENTS:
            raise BackendLoadError(f"gr00t backend: embodiment must be one of {', '.join(map(repr, EMBODIMENTS))}, "
                                   f"got {self.embodiment!r}")
        self.embodiment = name
        layout = EMBODIMENTS[name]
        self.embodiment_tag = self.embodiment_tag or layout.tag
        if self.action_prefix is None:
            self.action_prefix = layout.action_prefix

    @property
    def spec(self) -> ModalitySpec:
        return EMBODIMENTS[self.embodiment].spec

    @property
    def tag_value(self) -> str:
        return EMBODIMENT_TAGS.get(self.embodiment_tag.upper(), self.embodiment_tag)

    def runtime_env(self) -> dict[str, Any]:
        """Ray `runtime_env` for replicas: explicit env_vars plus those of `pass_env` set here."""
        env = {k: os.environ[k] for k in self.pass_env if os.environ.get(k)}
        env.update(self.env_vars)
        return {"env_vars": env} if env else {}


class GrootLikePolicy(Protocol):
    """The part of Isaac-GR00T's `Gr00tPolicy` the backend relies on (its documented contract)."""

    def get_action(self, observation: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]: ...


# ------------------------------------------------------------------------------------------------
# The backend
# ------------------------------------------------------------------------------------------------


class Backend(PolicyBackend):
    """GR00T N1.x: real checkpoints through `gr00t`, or the N1.7 network with random weights."""

    def __init__(self, policy_factory: Any = None, **options: Any) -> None:
        if isinstance(policy_factory, str):  # "module:callable", e.g. from JSON backend options
            options["policy_factory"], policy_factory = policy_factory, None
        if "settings" in options:
            self.settings: Gr00tSettings = options.pop("settings")
        else:
            if "steps" in options:
                options["denoising_steps"] = options.pop("steps")
            unknown = set(options) - set(Gr00tSettings.__dataclass_fields__)
            if unknown:
                raise BackendLoadError(f"gr00t backend: unknown options {sorted(unknown)}")
            self.settings = Gr00tSettings(**options)
        if self.settings.mode not in ("gr00t", "n17-random"):
            raise BackendLoadError(f"gr00t backend: mode must be 'gr00t' or 'n17-random', got {self.settings.mode!r}")
        if self.settings.cuda_graph_scope not in ("forward", "head"):
            raise BackendLoadError(
                f"gr00t backend: cuda_graph_scope must be 'forward' or 'head', got {self.settings.cuda_graph_scope!r}"
            )
        self._factory = policy_factory  # tests inject a labelled double of Gr00tPolicy here
        self.policy: GrootLikePolicy | None = None
        self.spec: ModalitySpec = self.settings.spec
        self.load_time_s = 0.0
        self.parameters = 0
        self.last_call: dict[str, Any] = {}

    @property
    def _is_random_network(self) -> bool:
        return self.settings.mode == "n17-random" and self._factory is None and not self.settings.policy_factory

    @property
    def health_check_timeout_s(self) -> float:
        return self.settings.health_check_timeout_s

    def runtime_env(self) -> dict[str, Any]:
        return self.settings.runtime_env()

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        t0 = time.perf_counter()
        s = self.settings
        if self._factory is None and s.policy_factory:
            import importlib

            module, _, name = s.policy_factory.partition(":")
            self._factory = getattr(importlib.import_module(module), name)
        if self._factory is not None:
            self.policy = self._factory(s)
        elif s.mode == "n17-random":
            from rolloutq.policy_workers.backends._gr00t_n17 import N17RandomPolicy

            self.policy = N17RandomPolicy(
                device=s.device,
                denoising_steps=s.denoising_steps,
                spec=self.spec,
                embodiment_id=N17_EMBODIMENT_IDS.get(s.tag_value, 10),
                seed=s.seed,
                cuda_graph_batch_sizes=tuple(s.cuda_graph_batch_sizes),
                cuda_graph_tokens=s.cuda_graph_tokens,
                cuda_graph_scope=s.cuda_graph_scope,
                batched_vision_attention=s.batched_vision_attention,
                register_shared_frames=s.register_shared_frames,
            )
        else:
            self.policy = self._load_gr00t()
        spec = getattr(self.policy, "spec", None)
        if isinstance(spec, ModalitySpec):
            self.spec = spec
        self.parameters = int(getattr(self.policy, "parameters", 0) or 0)
        for b in s.warmup_batch_sizes:
            self.infer([synthetic_observation(self.spec, i) for i in range(int(b))])
        self.load_time_s = time.perf_counter() - t0

    def _load_gr00t(self) -> GrootLikePolicy:
        s = self.settings
        if not s.model_path:
            raise BackendLoadError("gr00t backend: set model_path (a checkpoint directory or hub id)")
        try:
            from gr00t.data.embodiment_tags import EmbodimentTag
            from gr00t.policy.gr00t_policy import Gr00tPolicy
        except ImportError as e:
            raise BackendLoadError(f"gr00t backend: {INSTALL_HINT} (import error: {e})") from None
        try:
            tag = EmbodimentTag(s.tag_value)
        except ValueError:
            tag = EmbodimentTag[s.embodiment_tag.upper()]
        policy = Gr00tPolicy(embodiment_tag=tag, model_path=s.model_path, device=s.device, strict=s.strict)
        self.spec = _spec_from_gr00t(policy, self.spec)
        policy.parameters = sum(p.numel() for p in policy.model.parameters())  # type: ignore[attr-defined]
        return policy

    # -- metadata --------------------------------------------------------------------------
    def metadata(self) -> PolicyMetadata:
        s, spec = self.settings, self.spec
        # Leading dimension -1: a request may carry several rows (a vectorized simulator's envs,
        # language as one [text] per row); the batch is stacked and split by rows.
        obs_schema: dict[str, dict[str, Any]] = {}
        for key, shape in spec.video.items():
            obs_schema[f"video.{key}"] = {"dtype": "uint8", "shape": [-1, *shape]}
        for key, shape in spec.state.items():
            obs_schema[f"state.{key}"] = {"dtype": "float32", "shape": [-1, *shape]}
        for key in spec.language:
            obs_schema[key] = {"kind": "text"}
        act_schema = {
            f"{s.action_prefix}{k}": {"dtype": "float32", "shape": [-1, spec.chunk_length, d]}
            for k, d in spec.action.items()
        }
        random = self._is_random_network
        label = None if random else getattr(self.policy, "label", None)  # a stand-in says what it is
        if random:
            model_id = "gr00t-n1.7-random-weights"
            desc = (
                f"{RANDOM_LABEL}: the GR00T N1.7 architecture with random weights in the {s.embodiment} "
                "layout, for measuring serving cost only. Its action chunks are noise, not a policy."
            )
        elif label:
            model_id = s.model_path or "gr00t"
            desc = f"{label} ({s.embodiment} layout)"
        else:
            model_id = s.model_path or "gr00t"
            desc = (f"NVIDIA GR00T ({s.model_path}) embodiment {s.tag_value}, {s.embodiment} layout, "
                    "through the gr00t package")
        return PolicyMetadata(
            model_id=model_id,
            observation_schema=obs_schema,
            action_schema=act_schema,
            chunk_length=spec.chunk_length,
            action_horizon=s.action_horizon,
            device=s.device,
            parameters=self.parameters,
            description=desc,
            extra={
                "backend": "gr00t",
                "mode": s.mode,
                "embodiment": s.embodiment,
                "embodiment_tag": s.tag_value,
                "modality_config": spec.to_dict(),
                "denoising_steps": s.denoising_steps,
                "cuda_graph_batch_sizes": list(s.cuda_graph_batch_sizes),
                **({"cuda_graphs": self.policy.capture_report}
                   if getattr(self.policy, "capture_report", None) else {}),
                **({"vision_attention": self.policy.vision_attention}
                   if hasattr(self.policy, "vision_attention") else {}),
                "load_time_s": round(self.load_time_s, 2),
                **({"label": RANDOM_LABEL} if random else {"label": label} if label else {}),
            },
        )

    # -- inference -------------------------------------------------------------------------
    def infer(self, batch: list[Obs]) -> list[Chunk]:
        if self.policy is None:
            raise BackendLoadError("gr00t backend: infer() before load()")
        t0 = time.perf_counter()
        nested, sizes = [], []
        for i, obs in enumerate(batch):
            n = to_nested(obs, self.spec)
            sizes.append(check_nested(n, self.spec, where=f"observation {i}"))
            nested.append(n)
        stacked = stack(nested, self.spec, batch_buffer=getattr(self.policy, "batch_buffer", None),
                        video_rows=self._video_rows(nested))
        t1 = time.perf_counter()
        action, info = self.policy.get_action(stacked)
        t2 = time.perf_counter()
        chunks = split(action, sizes, self.settings.action_prefix)
        if self._is_random_network:
            for c in chunks:
                c["info.note"] = RANDOM_LABEL  # type: ignore[assignment]
        self.last_call = {
            "batch": sum(sizes),
            "assemble_ms": (t1 - t0) * 1e3,
            "get_action_ms": (t2 - t1) * 1e3,
            "split_ms": (time.perf_counter() - t2) * 1e3,
            **(info.get("timings", {}) if isinstance(info, dict) else {}),
            **({"path": info["path"]} if isinstance(info, dict) and "path" in info else {}),
        }
        return chunks

    def _video_rows(self, nested: list[dict[str, dict[str, Any]]]) -> dict[str, VideoRows] | None:
        """Where the policy loads frames itself (the captured forward) and could register the
        simulators' shared-memory segments they are views of, leave them there, one run per
        request. None: assemble one array as usual."""
        loadable = getattr(self.policy, "frames_loadable", None)
        if len(nested) < 2 or not getattr(self.policy, "loads_video_rows", False) or loadable is None:
            return None
        out = {}
        for key, shape in self.spec.video.items():
            frames = [n["video"][key] for n in nested]
            if not loadable(frames):
                return None
            found = [(f, 0, f.shape[0]) for f in frames]
            out[key] = VideoRows(found, (sum(n for _, _, n in found), *shape), found[0][0].dtype)
        return out


def _spec_from_gr00t(policy: Any, fallback: ModalitySpec) -> ModalitySpec:
    """Read keys from `Gr00tPolicy.modality_configs`; shapes of known embodiments come from specs.

    The package's modality config names keys and time offsets but not image sizes or state widths,
    so unknown embodiments keep the keys with the fallback's shapes where the names match.
    """
    cfg = getattr(policy, "modality_configs", None)
    if not cfg:
        return fallback

    def keys(mod: str) -> list[str]:
        c = cfg.get(mod)
        ks = list(getattr(c, "modality_keys", []) or [])
        return [k.split(".", 1)[1] if k.startswith(mod + ".") else k for k in ks]

    def horizon(mod: str, default: int) -> int:
        c = cfg.get(mod)
        d = getattr(c, "delta_indices", None)
        return len(d) if d else default

    tv, ts = horizon("video", 2), horizon("state", 1)
    video = {k: (tv, *fallback.video.get(k, (0, 256, 256, 3))[1:]) for k in keys("video")} or fallback.video
    state = {k: (ts, fallback.state.get(k, (1, 0))[1]) for k in keys("state")} or fallback.state
    action = {k: fallback.action.get(k, 0) for k in keys("action")} or fallback.action
    lang = tuple(getattr(cfg.get("language"), "modality_keys", []) or fallback.language)
    chunk = horizon("action", fallback.chunk_length)
    return ModalitySpec(video=video, state=state, action=action, language=lang, chunk_length=chunk)
