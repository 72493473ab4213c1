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
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from broker.real_g1 import ACTION_DIMS
from policy_workers.base import Chunk, Obs, PolicyBackend, PolicyMetadata
from policy_workers.errors import BackendLoadError, SchemaMismatch

RANDOM_LABEL = "GR00T N1.7 network, random weights"
"""Said by the metadata, every chunk and every `info` of the `n17-random` mode."""

LANGUAGE_KEY = "annotation.human.task_description"

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


@dataclass(frozen=True)
class ModalitySpec:
    """What one embodiment's observation and action look like (per sample, without B).

    `video` maps camera key -> (T, H, W, 3); `state` maps key -> (T, D); `action` maps key -> D,
    in the order the model packs them; `chunk_length` is the model's action horizon.
    """

    video: dict[str, tuple[int, ...]]
    state: dict[str, tuple[int, ...]]
    action: dict[str, int]
    language: tuple[str, ...] = (LANGUAGE_KEY,)
    chunk_length: int = 40

    def to_dict(self) -> dict[str, Any]:
        return {
            "video": {k: list(v) for k, v in self.video.items()},
            "state": {k: list(v) for k, v in self.state.items()},
            "action": {k: [self.chunk_length, d] for k, d in self.action.items()},
            "language": list(self.language),
        }


REAL_G1 = ModalitySpec(
    video={"ego_view": (2, 256, 256, 3)},
    state={
        "left_wrist_eef_9d": (1, 9),
        "right_wrist_eef_9d": (1, 9),
        "left_arm": (1, 7),
        "right_arm": (1, 7),
        "left_hand": (1, 7),
        "right_hand": (1, 7),
        "waist": (1, 3),
    },
    action=dict(ACTION_DIMS),
)
"""The reference design's embodiment (DESIGN.md): one 2-frame 256x256 ego camera, 7 state groups,
9 action groups of a 40-step chunk."""

KNOWN_SPECS = {"real_g1_relative_eef_relative_joints": REAL_G1}


# ------------------------------------------------------------------------------------------------
# Key mapping: flat <-> nested, stacking along B and splitting back
# ------------------------------------------------------------------------------------------------


def _language_rows(value: Any, where: str) -> list[list[str]]:
    """Language as the GR00T contract has it: a list (B) of lists (1) of strings."""
    if isinstance(value, str):
        return [[value]]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        rows: list[list[str]] = []
        for item in value:
            if isinstance(item, str):
                rows.append([item])
            elif isinstance(item, (list, tuple)) and len(item) == 1 and isinstance(item[0], str):
                rows.append([item[0]])
            else:
                raise SchemaMismatch(f"{where}: language must be [[str], ...] (B, 1), got {value!r:.80}")
        if rows:
            return rows
    raise SchemaMismatch(f"{where}: language must be [[str], ...] (B, 1), got {value!r:.80}")


def to_nested(obs: Obs, spec: ModalitySpec) -> dict[str, dict[str, Any]]:
    """Either observation form -> `{"video": {...}, "state": {...}, "language": {...}}`."""
    nested: dict[str, dict[str, Any]] = {"video": {}, "state": {}, "language": {}}
    for key, value in obs.items():
        if key in ("video", "state", "language") and isinstance(value, dict):
            for sub, v in value.items():
                name = sub.split(".", 1)[1] if sub.startswith(key + ".") else sub
                nested[key][name] = v
        elif key.startswith("video."):
            nested["video"][key[6:]] = value
        elif key.startswith("state."):
            nested["state"][key[6:]] = value
        elif key.startswith("annotation.") or key in spec.language:
            nested["language"][key] = value
        elif key.startswith("language."):
            nested["language"][key[9:]] = value
        # anything else (episode ids, rewards a sim chose to send along) is not model input
    lang = nested["language"]
    if len(spec.language) == 1 and spec.language[0] not in lang and len(lang) == 1:
        # a single instruction under another name (e.g. "task") is the instruction
        lang[spec.language[0]] = lang.pop(next(iter(lang)))
    return nested


def check_nested(nested: dict[str, dict[str, Any]], spec: ModalitySpec, where: str = "observation") -> int:
    """Validate against the spec (dtype, per-sample shape); returns the observation's B."""
    batch = None

    def _b(n: int, key: str) -> None:
        nonlocal batch
        if batch is None:
            batch = n
        elif n != batch:
            raise SchemaMismatch(f"{where}: {key} has batch size {n}, other keys have {batch}")

    for mod, want_dtype in (("video", np.uint8), ("state", np.float32)):
        shapes = spec.video if mod == "video" else spec.state
        for key, shape in shapes.items():
            if key not in nested[mod]:
                raise SchemaMismatch(f"{where}: missing {mod}.{key} (expected shape (B, {', '.join(map(str, shape))}))")
            arr = nested[mod][key]
            if not isinstance(arr, np.ndarray):
                arr = nested[mod][key] = np.asarray(arr, dtype=want_dtype)
            if arr.dtype != want_dtype:
                if mod == "state" and arr.dtype.kind == "f":
                    arr = nested[mod][key] = arr.astype(np.float32)
                else:
                    raise SchemaMismatch(f"{where}: {mod}.{key} must be {np.dtype(want_dtype).name}, got {arr.dtype}")
            if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != tuple(shape):
                raise SchemaMismatch(
                    f"{where}: {mod}.{key} must have shape (B, {', '.join(map(str, shape))}), got {arr.shape}"
                )
            _b(arr.shape[0], f"{mod}.{key}")
    for key in spec.language:
        if key not in nested["language"]:
            raise SchemaMismatch(f"{where}: missing language {key!r} ([[instruction]])")
        rows = nested["language"][key] = _language_rows(nested["language"][key], f"{where}: {key}")
        _b(len(rows), key)
    if batch is None:
        raise SchemaMismatch(f"{where}: no video, state or language keys")
    return batch


@dataclass
class Staged:
    """A request prepared ahead of its batch (`Backend.stage`): checked, frames already on the device."""

    nested: dict[str, dict[str, Any]]
    size: int


def stack(nested_list: list[dict[str, dict[str, Any]]], spec: ModalitySpec,
          cat_video: Any = None, batch_buffer: Any = None) -> dict[str, dict[str, Any]]:
    """Concatenate checked observations along B (one array per key, language rows joined).

    Video parts that are not numpy arrays (staged device tensors) are joined with `cat_video`;
    numpy frames of several requests go into `batch_buffer(key, shape, dtype)` where the policy
    has one (a reused, page-locked array: no fresh allocation per batch, an asynchronous copy to
    the GPU), valid until the next call."""
    out: dict[str, dict[str, Any]] = {"video": {}, "state": {}, "language": {}}
    for mod in ("video", "state"):
        for key in spec.video if mod == "video" else spec.state:
            parts = [n[mod][key] for n in nested_list]
            if len(parts) == 1:
                out[mod][key] = parts[0]
            elif not isinstance(parts[0], np.ndarray):
                out[mod][key] = cat_video(parts, 0)
            elif mod == "video" and batch_buffer is not None:
                shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
                out[mod][key] = _copy_rows(parts, batch_buffer(key, shape, parts[0].dtype))
            else:
                out[mod][key] = np.concatenate(parts, 0)
    for key in spec.language:
        out["language"][key] = [row for n in nested_list for row in n["language"][key]]
    return out


_COPY_POOL: ThreadPoolExecutor | None = None
PARALLEL_COPY_BYTES = 4 << 20
COPY_THREADS = 4


def _copy_rows(parts: list[np.ndarray], out: np.ndarray) -> np.ndarray:
    """Concatenate `parts` into `out` along B; a large batch (64 REAL_G1 requests: 25 MB) is copied
    by a few threads, since numpy releases the GIL while it copies and one core's memcpy is the
    limit."""
    global _COPY_POOL
    if out.nbytes < PARALLEL_COPY_BYTES or len(parts) < 2 * COPY_THREADS:
        return np.concatenate(parts, 0, out=out)
    starts = np.cumsum([0] + [p.shape[0] for p in parts]).tolist()

    def copy(group: int) -> None:
        for i in range(group, len(parts), COPY_THREADS):
            np.copyto(out[starts[i] : starts[i + 1]], parts[i])

    if _COPY_POOL is None:
        _COPY_POOL = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="rolloutq-batch-copy")
    list(_COPY_POOL.map(copy, range(COPY_THREADS)))
    return out


def split(action: dict[str, Any], sizes: list[int], prefix: str = "action.") -> list[Chunk]:
    """Cut a batched action dict (B, horizon, D) back into one chunk per request."""
    total = sum(sizes)
    chunks: list[Chunk] = [{} for _ in sizes]
    for key, value in action.items():
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != total:
            raise SchemaMismatch(f"policy returned {key} with leading dim {arr.shape[:1]}, expected {total}")
        name = key.split(".", 1)[1] if key.startswith("action.") else key
        start = 0
        for i, n in enumerate(sizes):
            chunks[i][prefix + name] = np.ascontiguousarray(arr[start : start + n], dtype=np.float32)
            start += n
    return chunks


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
    embodiment_tag: str = "REAL_G1"  # enum name or value
    device: str = "cuda"
    denoising_steps: int = 4
    action_horizon: int = 8  # steps of the 40-step chunk a simulator executes before re-querying
    strict: bool = False  # Gr00tPolicy input/output validation (costs time per call)
    seed: int = 0
    health_check_timeout_s: float = 300.0
    env_vars: dict[str, str] = field(default_factory=dict)
    pass_env: tuple[str, ...] = ("HF_TOKEN", "HF_HOME", "HUGGINGFACE_HUB_CACHE")
    action_prefix: str = "action."
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
    stage_requests: bool = False
    """n17-random: copy each request's frames to the device as it arrives (`Backend.stage`), so a
    batch's frames are on the GPU when its last request comes in. Off by default: on an H100 with
    co-located simulators (requests arriving within ~3 ms) the per-request copies queued behind
    the decoding and lengthened the gap instead (docs/benchmarks.md, run 18)."""
    batched_vision_attention: bool = True
    """n17-random: run the vision tower's attention over all images in one call instead of
    transformers' per-image loop (checked against it at load; `_vision_attention`)."""
    policy_factory: str | None = None
    """`module:callable` taking the settings and returning a Gr00tPolicy-like object (custom wrappers,
    test doubles); overrides `mode`'s loader."""

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
        self.spec: ModalitySpec = KNOWN_SPECS.get(self.settings.tag_value, REAL_G1)
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
            from policy_workers.backends._gr00t_n17 import N17RandomPolicy

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
        obs_schema: dict[str, dict[str, Any]] = {}
        for key, shape in spec.video.items():
            obs_schema[f"video.{key}"] = {"dtype": "uint8", "shape": [1, *shape]}
        for key, shape in spec.state.items():
            obs_schema[f"state.{key}"] = {"dtype": "float32", "shape": [1, *shape]}
        for key in spec.language:
            obs_schema[key] = {"kind": "text"}
        act_schema = {
            f"{s.action_prefix}{k}": {"dtype": "float32", "shape": [1, spec.chunk_length, d]}
            for k, d in spec.action.items()
        }
        random = self._is_random_network
        if random:
            model_id = "gr00t-n1.7-random-weights"
            desc = (
                f"{RANDOM_LABEL}: the GR00T N1.7 architecture with random weights, for measuring "
                "serving cost only. Its action chunks are noise, not a policy."
            )
        else:
            model_id = s.model_path or "gr00t"
            desc = f"NVIDIA GR00T ({s.model_path}) embodiment {s.tag_value} through the gr00t package"
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
                "embodiment_tag": s.tag_value,
                "modality_config": spec.to_dict(),
                "denoising_steps": s.denoising_steps,
                "cuda_graph_batch_sizes": list(s.cuda_graph_batch_sizes),
                **({"cuda_graphs": self.policy.capture_report}
                   if getattr(self.policy, "capture_report", None) else {}),
                **({"vision_attention": self.policy.vision_attention}
                   if hasattr(self.policy, "vision_attention") else {}),
                "load_time_s": round(self.load_time_s, 2),
                **({"label": RANDOM_LABEL} if random else {}),
            },
        )

    # -- inference -------------------------------------------------------------------------
    @property
    def stages(self) -> bool:  # type: ignore[override]
        """Whether the policy can take frames to the device per request (n17-random can)."""
        return self.settings.stage_requests and callable(getattr(self.policy, "stage_video", None))

    def stage(self, obs: Obs) -> Staged:
        """Check one observation and copy its frames to the device while the rest of its batch arrives."""
        if self.policy is None:
            raise BackendLoadError("gr00t backend: stage() before load()")
        nested = to_nested(obs, self.spec)
        size = check_nested(nested, self.spec)
        self._video_to_device(nested)
        return Staged(nested, size)

    def _video_to_device(self, nested: dict[str, dict[str, Any]]) -> None:
        nested["video"] = {k: self.policy.stage_video(v) for k, v in nested["video"].items()}  # type: ignore[union-attr]

    def infer(self, batch: list[Obs | Staged]) -> list[Chunk]:
        if self.policy is None:
            raise BackendLoadError("gr00t backend: infer() before load()")
        t0 = time.perf_counter()
        nested, sizes = [], []
        mixed = any(isinstance(obs, Staged) for obs in batch)
        for i, obs in enumerate(batch):
            if isinstance(obs, Staged):
                nested.append(obs.nested)
                sizes.append(obs.size)
                continue
            n = to_nested(obs, self.spec)
            sizes.append(check_nested(n, self.spec, where=f"observation {i}"))
            if mixed:  # joins with staged frames only once on the device too
                self._video_to_device(n)
            nested.append(n)
        stacked = stack(nested, self.spec, cat_video=getattr(self.policy, "cat_video", None),
                        batch_buffer=getattr(self.policy, "batch_buffer", None))
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


def synthetic_observation(spec: ModalitySpec, seed: int = 0, task: str = "pick up the apple") -> Obs:
    """A flat observation of the right shapes with random content (warm-up, benchmarks)."""
    rng = np.random.default_rng(seed)
    obs: Obs = {f"video.{k}": rng.integers(0, 256, size=(1, *shape), dtype=np.uint8) for k, shape in spec.video.items()}
    for k, shape in spec.state.items():
        obs[f"state.{k}"] = rng.standard_normal((1, *shape)).astype(np.float32)
    obs[spec.language[0]] = [[task]]
    return obs


def synthetic_text_ids(text: str, vocab: int = 151_000) -> list[int]:
    """Stand-in tokenizer for the random-weight network (the real Qwen tokenizer needs the hub).

    One id per word from a CRC of the word: the sequence length tracks the real tokenizer's
    closely for short English instructions, which is all the cost measurement needs.
    """
    return [zlib.crc32(w.encode()) % vocab for w in text.split()] or [0]
