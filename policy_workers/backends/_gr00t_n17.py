"""The GR00T N1.7 network with random weights, with a `Gr00tPolicy`-like `get_action`.

Built offline from LeRobot >= 0.6's `lerobot.policies.groot.groot_n1_7` (`GR00TN17`,
`load_backbone_weights=False`: the Cosmos-Reason2-2B / Qwen3-VL backbone from its hard-coded
config, cut at layer 16, plus the 32-layer AlternateVLDiT flow-matching head), cast to bf16.
Needs Python >= 3.12, lerobot, diffusers, dm-tree, transformers with Qwen3-VL.

Input preparation mirrors N1.7's eval path at its real sizes, on the GPU: each (T) frame is resized
to 256, centre-cropped by 230/256, resized back to 256, scaled to [-1, 1] (Qwen3-VL mean/std 0.5)
and cut into Qwen-VL patches (16 px, temporal patch 2, 2x2 merge -> 64 tokens per frame); the
prompt is the Qwen chat layout (im_start, user, one vision block per frame, instruction, im_end)
with a STAND-IN tokenizer for the words (the real one needs the hub), left-padded across the
batch; state groups are concatenated and zero-padded to 132. The vision tower's attention runs
all (equal-sized) images in one call (`_vision_attention`; `batched_vision_attention=False` keeps
transformers' per-image loop). With `cuda_graph_batch_sizes` the whole forward (or only the action
head) replays as CUDA graphs (`_n17_graphs`); `info["path"]` says which path a call took. The
actions it returns are noise: every `info` says "GR00T N1.7 network, random weights".
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
from rolloutq.policy_workers.backends._gr00t_layout import ModalitySpec, VideoRows, synthetic_text_ids
from rolloutq.policy_workers.backends._mapped_frames import MappedFrames
from rolloutq.policy_workers.backends._n17_graphs import Graphs, capture
from rolloutq.policy_workers.backends._vision_attention import batch_vision_attention
from rolloutq.policy_workers.backends.gr00t import RANDOM_LABEL
from rolloutq.policy_workers.errors import BackendLoadError

# Qwen2/3-VL special token ids (from the Cosmos-Reason2-2B / Qwen3-VL config and tokenizer).
IM_START, IM_END, PAD = 151644, 151645, 151643
VISION_START, VISION_END, IMAGE_PAD = 151652, 151653, 151655
USER, NEWLINE = 872, 198
PATCH, TEMPORAL_PATCH, MERGE = 16, 2, 2
TARGET, CROP = 256, 230
MAX_DIM = 132
HOST_REGISTER_READ_ONLY = 0x08 | 0x01  # cudaHostRegisterReadOnly | cudaHostRegisterPortable


class N17RandomPolicy:
    """`get_action(nested_obs) -> (action, info)` on the random-weight N1.7 network."""

    def __init__(
        self,
        device: str = "cuda",
        denoising_steps: int = 4,
        spec: ModalitySpec | None = None,
        embodiment_id: int = 25,
        seed: int = 0,
        cuda_graph_batch_sizes: tuple[int, ...] = (),
        cuda_graph_tokens: int = 160,
        cuda_graph_scope: str = "forward",
        batched_vision_attention: bool = True,
        register_shared_frames: bool = True,
    ) -> None:
        try:
            import torch
            from lerobot.policies.groot.groot_n1_7 import GR00TN17, GR00TN17Config
        except ImportError as e:
            raise BackendLoadError(
                "n17-random mode needs lerobot>=0.6 (Python>=3.12) with diffusers, dm-tree and a "
                f"transformers with Qwen3-VL: pip install 'lerobot[groot]>=0.6.1' ({e})"
            ) from None
        from rolloutq.policy_workers.backends._gr00t_layout import REAL_G1

        self.torch = torch
        self.spec = spec or REAL_G1
        self.device = torch.device(device)
        self.embodiment_id = embodiment_id
        self.seed = seed
        self.state_width = MAX_DIM
        self.label = RANDOM_LABEL
        torch.manual_seed(seed)
        cfg = GR00TN17Config(num_inference_timesteps=int(denoising_steps))
        with self.device:
            model = GR00TN17(cfg, load_backbone_weights=False)
        self.model = model.to(device=self.device, dtype=torch.bfloat16).eval()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.vision_attention = "stock (turned off)"
        if batched_vision_attention:
            self.vision_attention = batch_vision_attention(self.model, (TARGET // PATCH) ** 2, torch)
        self.state_dim = sum(s[-1] for s in self.spec.state.values())
        self.action_dim = sum(self.spec.action.values())
        if self.state_dim > MAX_DIM or self.action_dim > MAX_DIM:
            raise BackendLoadError(f"state ({self.state_dim}) / action ({self.action_dim}) wider than {MAX_DIM}")
        self._text_cache: dict[str, list[int]] = {}
        self._rope_cache: dict[tuple[int, int], np.ndarray] = {}
        self._host_buffers: dict[str, Any] = {}
        self.mapped: MappedFrames | None = None
        if register_shared_frames and self.device.type == "cuda":
            cudart = torch.cuda.cudart()
            self.mapped = MappedFrames(
                lambda ptr, size: int(cudart.cudaHostRegister(ptr, size, HOST_REGISTER_READ_ONLY)) == 0,
                lambda ptr: cudart.cudaHostUnregister(ptr),
            )
        self.graphs: Graphs | None = None
        self.capture_report: dict[str, Any] = {}
        if cuda_graph_batch_sizes:
            if self.device.type != "cuda":
                raise BackendLoadError(f"cuda_graph_batch_sizes needs a CUDA device, not {device!r}: drop the "
                                       "option or set device='cuda'")
            self.graphs, self.capture_report = capture(
                self, sorted({int(b) for b in cuda_graph_batch_sizes}), cuda_graph_tokens, cuda_graph_scope
            )

    # -- input preparation -----------------------------------------------------------------
    def video_to_device(self, video: np.ndarray, non_blocking: bool = False) -> Any:
        """A batch's frames (B, T, H, W, 3) uint8 on the device (the eager path)."""
        with warnings.catch_warnings():  # read-only views (shared memory, Redis bytes): never written
            warnings.simplefilter("ignore", UserWarning)
            return self.torch.from_numpy(np.ascontiguousarray(video)).to(self.device, non_blocking=non_blocking)

    def batch_buffer(self, key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A reused page-locked host array for one video key's batch (`stack` fills it): the copy to
        the GPU is then a DMA that needs no staging, and no batch allocates and faults in ~25 MB of
        fresh pages. Valid until the next batch; calls are serial (one inference thread)."""
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = self._host_buffers.get(key)
        if buf is None or buf.numel() < n:
            pinned = self.device.type == "cuda"
            buf = self._host_buffers[key] = self.torch.empty(max(n, 1), dtype=self.torch.uint8, pin_memory=pinned)
        return buf[:n].numpy().view(dtype).reshape(shape)

    loads_video_rows = True
    """The captured forward takes a batch's frames from where they are (`VideoRows`): registered
    shared-memory segments."""

    def frames_loadable(self, frames: list[np.ndarray]) -> bool:
        """Whether the captured forward can copy each request's frames to the GPU from where they
        are: views of shared-memory segments, registered with CUDA (once per segment)."""
        return self.mapped is not None and self.mapped.all_registered(frames)

    def _materialized(self, obs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """`obs` with its `VideoRows` copied into the batch buffer (paths that need one array)."""
        if not any(isinstance(v, VideoRows) for v in obs["video"].values()):
            return obs
        video = {k: v.into(self.batch_buffer(k, v.shape, v.dtype)) if isinstance(v, VideoRows) else v
                 for k, v in obs["video"].items()}
        return {**obs, "video": video}

    def pixel_values(self, x: Any) -> Any:
        """(B, T, H, W, 3) uint8 on the device -> Qwen-VL pixel_values (B*T*256, 1536) bf16.

        Pure tensor work (no host sync, no host tensors), so the captured forward runs it too."""
        torch = self.torch
        F = torch.nn.functional
        b, t, h, w, c = x.shape
        x = x.reshape(b * t, h, w, c).permute(0, 3, 1, 2).float()
        if (h, w) != (TARGET, TARGET):
            x = F.interpolate(x, size=(TARGET, TARGET), mode="bicubic", antialias=True, align_corners=False)
        off = (TARGET - CROP) // 2
        x = x[:, :, off : off + CROP, off : off + CROP]
        x = F.interpolate(x, size=(TARGET, TARGET), mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp(0, 255) / 255.0 - 0.5) / 0.5
        n = b * t
        gh = gw = TARGET // PATCH
        # a still image fills both temporal slots of its patch
        x = x.unsqueeze(1).expand(n, TEMPORAL_PATCH, c, TARGET, TARGET)
        x = x.reshape(n, TEMPORAL_PATCH, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(n * gh * gw, c * TEMPORAL_PATCH * PATCH * PATCH).to(torch.bfloat16)

    def image_grid(self, images: int) -> Any:
        """grid_thw (images, 3) on the device: every frame is resized to one 16 x 16 patch grid."""
        g = TARGET // PATCH
        return self.torch.tensor([[1, g, g]], device=self.device, dtype=self.torch.long).expand(images, 3).contiguous()

    def host_inputs(self, obs: dict[str, dict[str, Any]], pad_to: int = 0, layout: bool = False) -> dict[str, Any]:
        """The batch's inputs before any copy to the device: video (numpy, or frames already on the
        device), prompt ids / mask (B, L) int64, state (B, 1, 132) float32. With `layout`, also
        the Qwen3-VL M-RoPE positions (3, B, L) and the flat indices of the image tokens, which the
        captured forward takes as inputs instead of working them out on the host mid-forward."""
        spec = self.spec
        videos = [obs["video"][k] for k in spec.video]
        video = videos[0] if len(videos) == 1 else np.concatenate(videos, 1)  # views along T
        b, frames = video.shape[0], video.shape[1]
        texts = [row[0] for row in obs["language"][spec.language[0]]]
        ids, mask, lengths = self._token_rows(texts, frames, pad_to)
        state = np.zeros((b, 1, MAX_DIM), dtype=np.float32)
        col = 0
        for k, shape in spec.state.items():
            d = shape[-1]
            state[:, 0, col : col + d] = np.asarray(obs["state"][k], dtype=np.float32)[:, -1, :]
            col += d
        out = {"video": video, "input_ids": ids, "attention_mask": mask, "state": state}
        if layout:
            width = ids.shape[1]
            positions = np.zeros((3, b, width), dtype=np.int64)  # padding keeps position 0, as the model does
            for i, n in enumerate(lengths):
                positions[:, i, width - n :] = self._row_positions(ids[i, width - n :], frames)
            out["positions"] = positions
            out["image_index"] = np.flatnonzero(ids == IMAGE_PAD)  # row-major: masked_scatter's order
        return out

    def _token_rows(self, texts: list[str], frames: int, pad_to: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
        per_frame = (TARGET // PATCH // MERGE) ** 2
        rows = []
        for text in texts:
            ids = self._text_cache.get(text)
            if ids is None:
                clean = "".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace() or ch == "_")
                ids = self._text_cache[text] = synthetic_text_ids(clean)
            row = [IM_START, USER, NEWLINE]
            for _ in range(frames):
                row += [VISION_START] + [IMAGE_PAD] * per_frame + [VISION_END]
            rows.append(row + ids + [IM_END, NEWLINE])
        length = max(max(len(r) for r in rows), pad_to)
        ids = np.full((len(rows), length), PAD, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, r in enumerate(rows):  # left padding, as the N1.7 processor does
            ids[i, length - len(r) :] = r
            mask[i, length - len(r) :] = 1
        return ids, mask, [len(r) for r in rows]

    def _row_positions(self, row: np.ndarray, frames: int) -> np.ndarray:
        """(3, n) M-RoPE positions of one unpadded prompt, from the model's own `get_rope_index` run
        on the host once per prompt length (a row's layout is fixed by its length and frame count)."""
        key = (frames, len(row))
        hit = self._rope_cache.get(key)
        if hit is None:
            torch = self.torch
            qwen = self.model.backbone.model.model
            ids = torch.from_numpy(row[None].copy())
            g = TARGET // PATCH
            pos, _ = qwen.get_rope_index(
                input_ids=ids,
                mm_token_type_ids=(ids == IMAGE_PAD).to(torch.int32),
                image_grid_thw=torch.tensor([[1, g, g]] * frames, dtype=torch.long),
                attention_mask=None,
            )
            hit = self._rope_cache[key] = pos[:, 0].numpy().astype(np.int64)
        return hit

    def prepare(self, obs: dict[str, dict[str, Any]], pad_to: int = 0) -> dict[str, Any]:
        """The model's eager inputs, on the device."""
        return self.device_inputs(self.host_inputs(obs, pad_to))

    def device_inputs(self, host: dict[str, Any]) -> dict[str, Any]:
        torch = self.torch
        video = host["video"]
        x = video if isinstance(video, torch.Tensor) else self.video_to_device(video, non_blocking=True)
        b, frames = video.shape[0], video.shape[1]
        return {
            "input_ids": torch.from_numpy(host["input_ids"]).to(self.device, non_blocking=True),
            "attention_mask": torch.from_numpy(host["attention_mask"]).to(self.device, non_blocking=True),
            "pixel_values": self.pixel_values(x),
            "image_grid_thw": self.image_grid(b * frames),
            "state": torch.from_numpy(host["state"]).to(self.device, dtype=torch.bfloat16, non_blocking=True),
            "embodiment_id": torch.full((b,), self.embodiment_id, dtype=torch.long, device=self.device),
        }

    # -- the call --------------------------------------------------------------------------
    def get_action(self, obs: dict[str, dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        torch = self.torch
        t0 = time.perf_counter()
        with torch.inference_mode():
            pred_t, tokens, path, t1 = self._forward(obs)
            pred = pred_t[:, :, : self.action_dim].float().cpu().numpy()  # syncs
        t2 = time.perf_counter()
        action: dict[str, np.ndarray] = {}
        col = 0
        for k, d in self.spec.action.items():
            action[k] = pred[:, : self.spec.chunk_length, col : col + d]
            col += d
        info = {
            "note": RANDOM_LABEL,
            "tokens": tokens,
            "path": path,
            "timings": {"prepare_ms": (t1 - t0) * 1e3, "forward_ms": (t2 - t1) * 1e3},
        }
        return action, info

    def _forward(self, obs: dict[str, dict[str, Any]]) -> tuple[Any, int, str, float]:
        """action_pred (B, horizon, 132) on the device, the prompt width, which path ran, and when
        the inputs were ready. A batch runs captured when a graph of its size (or the next larger)
        exists and its prompt fits the captured width; otherwise eagerly."""
        g = self.graphs
        b = next(iter(obs["video"].values())).shape[0]
        captured = g is not None and g.size_for(b) is not None
        if not (captured and g.scope == "forward" and len(obs["video"]) == 1):  # only it loads frames in place
            obs = self._materialized(obs)
        if captured:
            host = self.host_inputs(obs, pad_to=g.tokens, layout=g.scope == "forward")
            if g.accepts(host):
                inputs = host if g.scope == "forward" else self.device_inputs(host)
                t1 = time.perf_counter()
                return g.run(inputs), g.tokens, f"captured {g.scope}", t1
            video = host["video"]
            if isinstance(video, VideoRows):
                video = video.into(self.batch_buffer("video_rows", video.shape, video.dtype))
            inputs = self.device_inputs({**host, "video": video})
        else:
            inputs = self.prepare(obs)
        t1 = time.perf_counter()
        return self.model.get_action(inputs)["action_pred"], int(inputs["input_ids"].shape[1]), "eager", t1
