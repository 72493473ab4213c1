"""The GR00T observation and action layout, shared by the backend and the N1.7 network.

Modality specs (REAL_G1, LIBERO) and the embodiment layouts the backend serves, the flat <-> nested
key mapping of observations, stacking one micro-batch along B (frames into the policy's reused
page-locked buffer where it has one) and splitting the batched action back per request, and
synthetic observations for warm-up and benchmarks. Pure numpy: nothing here needs torch or a GPU.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from rolloutq.broker.real_g1 import ACTION_DIMS
from rolloutq.policy_workers.base import Chunk, Obs
from rolloutq.policy_workers.errors import SchemaMismatch

LANGUAGE_KEY = "annotation.human.task_description"


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

LIBERO = ModalitySpec(
    video={"agentview": (1, 256, 256, 3), "wrist": (1, 256, 256, 3)},
    state={"eef_pos": (1, 3), "eef_axis_angle": (1, 3), "gripper_qpos": (1, 2), "joint_pos": (1, 7)},
    action={"action": 7},
    chunk_length=16,
)
"""What rolloutq's `libero` task sends and executes (its schema module is the reference; the policy
side does not import simulators): the agent-view and wrist cameras, 256x256, one frame each; the
Panda's end-effector position and axis-angle, finger joints and arm joints; the instruction; a
16-step chunk of 7-D actions (delta position, delta axis-angle, gripper) under the key `action`.
In the N1.7 network that is two images of 64 vision tokens each (as many as REAL_G1's two-frame ego
view) and 15 state values, zero-padded to 132 like any embodiment's."""


@dataclass(frozen=True)
class Embodiment:
    """A layout the backend serves (`embodiment` option): the modality spec, the Isaac-GR00T embodiment
    tag it uses unless `embodiment_tag` says otherwise, and the prefix of its action keys on the wire."""

    name: str
    spec: ModalitySpec
    tag: str
    action_prefix: str


EMBODIMENTS = {
    "real_g1": Embodiment("real_g1", REAL_G1, "REAL_G1", "action."),
    "libero": Embodiment("libero", LIBERO, "NEW_EMBODIMENT", ""),
}
"""By `embodiment` option value: `real_g1` for the G1 tasks (g1-pickplace, g1-isaaclab), `libero` for
the libero task. LIBERO's actions go out as `action` (what the task reads), REAL_G1's as
`action.<group>`."""


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
class VideoRows:
    """A batch's frames for one key, left where they are: (array, first row, count) runs in batch
    order (each request's view of its shared-memory segment). A captured forward loads them by DMA;
    anything else copies them into one array."""

    runs: list[tuple[np.ndarray, int, int]]
    shape: tuple[int, ...]
    dtype: np.dtype

    def parts(self) -> list[np.ndarray]:
        return [pool[first : first + n] for pool, first, n in self.runs]

    def into(self, out: np.ndarray) -> np.ndarray:
        return _copy_rows(self.parts(), out)


def stack(nested_list: list[dict[str, dict[str, Any]]], spec: ModalitySpec, batch_buffer: Any = None,
          video_rows: dict[str, VideoRows] | None = None) -> dict[str, dict[str, Any]]:
    """Concatenate checked observations along B (one array per key, language rows joined).

    Frames of several requests go into `batch_buffer(key, shape, dtype)` where the policy has one
    (a reused, page-locked array: no fresh allocation per batch, an asynchronous copy to the GPU),
    valid until the next call; a key in `video_rows` (frames left in shared memory) is left there."""
    out: dict[str, dict[str, Any]] = {"video": {}, "state": {}, "language": {}}
    for mod in ("video", "state"):
        for key in spec.video if mod == "video" else spec.state:
            if mod == "video" and video_rows and key in video_rows:
                out[mod][key] = video_rows[key]
                continue
            parts = [n[mod][key] for n in nested_list]
            if len(parts) == 1:
                out[mod][key] = parts[0]
            elif mod == "video" and batch_buffer is not None:
                shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
                out[mod][key] = _copy_rows(parts, batch_buffer(key, shape, parts[0].dtype))
            else:
                out[mod][key] = np.concatenate(parts, 0)
    for key in spec.language:
        out["language"][key] = [row for n in nested_list for row in n["language"][key]]
    return out


_COPY_POOLS: dict[int, ThreadPoolExecutor] = {}
PARALLEL_COPY_BYTES = 4 << 20
COPY_THREADS = 4


def _copy_rows(parts: list[np.ndarray], out: np.ndarray, threads: int = 0) -> np.ndarray:
    """Concatenate `parts` into `out` along B; a large batch (64 REAL_G1 requests: 25 MB) is copied
    by a few threads (`COPY_THREADS` unless `threads`), since numpy releases the GIL while it copies
    and one core's memcpy is the limit."""
    threads = threads or COPY_THREADS
    if out.nbytes < PARALLEL_COPY_BYTES or len(parts) < 2 * threads:
        return np.concatenate(parts, 0, out=out)
    starts = np.cumsum([0] + [p.shape[0] for p in parts]).tolist()

    def copy(group: int) -> None:
        for i in range(group, len(parts), threads):
            np.copyto(out[starts[i] : starts[i + 1]], parts[i])

    pool = _COPY_POOLS.get(threads)
    if pool is None:
        pool = _COPY_POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="rolloutq-batch-copy")
    list(pool.map(copy, range(threads)))
    return out


def split(action: dict[str, Any], sizes: list[int], prefix: str = "action.") -> list[Chunk]:
    """Cut a batched action dict (B, horizon, D) back into one chunk per request."""
    total = sum(sizes)
    chunks: list[Chunk] = [{} for _ in sizes]
    for key, value in action.items():
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != total:
            raise SchemaMismatch(f"policy returned {key} with leading dim {arr.shape[:1]}, expected {total}")
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        # Each request's rows are a view: the reply's encoder copies only the steps it sends.
        name = prefix + (key.split(".", 1)[1] if key.startswith("action.") else key)
        start = 0
        for i, n in enumerate(sizes):
            chunks[i][name] = arr[start : start + n]
            start += n
    return chunks


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
