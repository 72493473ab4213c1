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
batch; state groups are concatenated and zero-padded to 132. The actions it returns are noise:
every `info` says "GR00T N1.7 network, random weights".
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from policy_workers.backends.gr00t import RANDOM_LABEL, ModalitySpec, synthetic_text_ids
from policy_workers.errors import BackendLoadError

# Qwen2/3-VL special token ids (from the Cosmos-Reason2-2B / Qwen3-VL config and tokenizer).
IM_START, IM_END, PAD = 151644, 151645, 151643
VISION_START, VISION_END, IMAGE_PAD = 151652, 151653, 151655
USER, NEWLINE = 872, 198
PATCH, TEMPORAL_PATCH, MERGE = 16, 2, 2
TARGET, CROP = 256, 230
MAX_DIM = 132


class N17RandomPolicy:
    """`get_action(nested_obs) -> (action, info)` on the random-weight N1.7 network."""

    def __init__(self, device: str = "cuda", denoising_steps: int = 4, spec: ModalitySpec | None = None,
                 embodiment_id: int = 25, seed: int = 0) -> None:
        try:
            import torch
            from lerobot.policies.groot.groot_n1_7 import GR00TN17, GR00TN17Config
        except ImportError as e:
            raise BackendLoadError(
                "n17-random mode needs lerobot>=0.6 (Python>=3.12) with diffusers, dm-tree and a "
                f"transformers with Qwen3-VL: pip install 'lerobot[groot]>=0.6.1' ({e})"
            ) from None
        from policy_workers.backends.gr00t import REAL_G1

        self.torch = torch
        self.spec = spec or REAL_G1
        self.device = torch.device(device)
        self.embodiment_id = embodiment_id
        self.label = RANDOM_LABEL
        torch.manual_seed(seed)
        cfg = GR00TN17Config(num_inference_timesteps=int(denoising_steps))
        with self.device:
            model = GR00TN17(cfg, load_backbone_weights=False)
        self.model = model.to(device=self.device, dtype=torch.bfloat16).eval()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.state_dim = sum(s[-1] for s in self.spec.state.values())
        self.action_dim = sum(self.spec.action.values())
        if self.state_dim > MAX_DIM or self.action_dim > MAX_DIM:
            raise BackendLoadError(f"state ({self.state_dim}) / action ({self.action_dim}) wider than {MAX_DIM}")
        self._text_cache: dict[str, list[int]] = {}

    # -- input preparation -----------------------------------------------------------------
    def _pixels(self, video: np.ndarray) -> tuple[Any, Any]:
        """(B, T, H, W, 3) uint8 -> Qwen-VL pixel_values (B*T*256, 1536) and grid_thw (B*T, 3)."""
        torch = self.torch
        F = torch.nn.functional
        b, t, h, w, c = video.shape
        x = torch.from_numpy(np.ascontiguousarray(video)).to(self.device, non_blocking=True)
        x = x.reshape(b * t, h, w, c).permute(0, 3, 1, 2).float()
        if (h, w) != (TARGET, TARGET):
            x = F.interpolate(x, size=(TARGET, TARGET), mode="bicubic", antialias=True, align_corners=False)
        off = (TARGET - CROP) // 2
        x = x[:, :, off:off + CROP, off:off + CROP]
        x = F.interpolate(x, size=(TARGET, TARGET), mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp(0, 255) / 255.0 - 0.5) / 0.5
        n = b * t
        gh = gw = TARGET // PATCH
        # a still image fills both temporal slots of its patch
        x = x.unsqueeze(1).expand(n, TEMPORAL_PATCH, c, TARGET, TARGET)
        x = x.reshape(n, TEMPORAL_PATCH, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        pixel_values = x.reshape(n * gh * gw, c * TEMPORAL_PATCH * PATCH * PATCH).to(torch.bfloat16)
        grid = torch.tensor([[1, gh, gw]], device=self.device, dtype=torch.long).expand(n, 3).contiguous()
        return pixel_values, grid

    def _tokens(self, texts: list[str], frames: int, pad_to: int = 0) -> tuple[Any, Any]:
        torch = self.torch
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
            ids[i, length - len(r):] = r
            mask[i, length - len(r):] = 1
        return (torch.from_numpy(ids).to(self.device, non_blocking=True),
                torch.from_numpy(mask).to(self.device, non_blocking=True))

    def prepare(self, obs: dict[str, dict[str, Any]], pad_to: int = 0) -> dict[str, Any]:
        torch = self.torch
        spec = self.spec
        videos = [obs["video"][k] for k in spec.video]
        video = videos[0] if len(videos) == 1 else np.concatenate(videos, axis=1)  # views along T
        b, frames = video.shape[0], video.shape[1]
        pixel_values, grid = self._pixels(video)
        texts = [row[0] for row in obs["language"][spec.language[0]]]
        input_ids, attention_mask = self._tokens(texts, frames, pad_to)
        state = np.zeros((b, 1, MAX_DIM), dtype=np.float32)
        col = 0
        for k, shape in spec.state.items():
            d = shape[-1]
            state[:, 0, col:col + d] = np.asarray(obs["state"][k], dtype=np.float32)[:, -1, :]
            col += d
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "image_grid_thw": grid,
            "state": torch.from_numpy(state).to(self.device, dtype=torch.bfloat16, non_blocking=True),
            "embodiment_id": torch.full((b,), self.embodiment_id, dtype=torch.long, device=self.device),
        }

    # -- the call --------------------------------------------------------------------------
    def get_action(self, obs: dict[str, dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        torch = self.torch
        t0 = time.perf_counter()
        inputs = self.prepare(obs)
        t1 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.get_action(inputs)
        pred = out["action_pred"][:, :, : self.action_dim].float().cpu().numpy()  # syncs
        t2 = time.perf_counter()
        action: dict[str, np.ndarray] = {}
        col = 0
        for k, d in self.spec.action.items():
            action[k] = pred[:, : self.spec.chunk_length, col:col + d]
            col += d
        info = {
            "note": RANDOM_LABEL,
            "tokens": int(inputs["input_ids"].shape[1]),
            "timings": {"prepare_ms": (t1 - t0) * 1e3, "forward_ms": (t2 - t1) * 1e3},
        }
        return action, info
