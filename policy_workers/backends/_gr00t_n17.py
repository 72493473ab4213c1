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
transformers' per-image loop). The actions it returns are noise: every `info` says "GR00T N1.7
network, random weights".
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from policy_workers.backends._vision_attention import batch_vision_attention
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

    def __init__(
        self,
        device: str = "cuda",
        denoising_steps: int = 4,
        spec: ModalitySpec | None = None,
        embodiment_id: int = 25,
        seed: int = 0,
        cuda_graph_batch_sizes: tuple[int, ...] = (),
        cuda_graph_tokens: int = 160,
        batched_vision_attention: bool = True,
    ) -> None:
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
        self.vision_attention = "stock (turned off)"
        if batched_vision_attention:
            self.vision_attention = batch_vision_attention(self.model, (TARGET // PATCH) ** 2, torch)
        self.state_dim = sum(s[-1] for s in self.spec.state.values())
        self.action_dim = sum(self.spec.action.values())
        if self.state_dim > MAX_DIM or self.action_dim > MAX_DIM:
            raise BackendLoadError(f"state ({self.state_dim}) / action ({self.action_dim}) wider than {MAX_DIM}")
        self._text_cache: dict[str, list[int]] = {}
        self.graphs: HeadGraphs | None = None
        if cuda_graph_batch_sizes:
            self.graphs = HeadGraphs(self, sorted(int(b) for b in cuda_graph_batch_sizes), cuda_graph_tokens)
            self.graphs.capture()

    # -- input preparation -----------------------------------------------------------------
    def stage_video(self, video: np.ndarray, non_blocking: bool = False) -> Any:
        """Frames (B, T, H, W, 3) uint8 on the device: one request's ahead of its batch, or a batch's."""
        with warnings.catch_warnings():  # read-only views (shared memory, Redis bytes): never written
            warnings.simplefilter("ignore", UserWarning)
            return self.torch.from_numpy(np.ascontiguousarray(video)).to(self.device, non_blocking=non_blocking)

    def cat_video(self, parts: list[Any], dim: int = 0) -> Any:
        return self.torch.cat(parts, dim)

    def _pixels(self, video: Any) -> tuple[Any, Any]:
        """(B, T, H, W, 3) uint8 (numpy, or staged on the device) -> Qwen-VL pixel_values (B*T*256, 1536)
        and grid_thw (B*T, 3)."""
        torch = self.torch
        F = torch.nn.functional
        b, t, h, w, c = video.shape
        x = video if isinstance(video, torch.Tensor) else self.stage_video(video, non_blocking=True)
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
            ids[i, length - len(r) :] = r
            mask[i, length - len(r) :] = 1
        return (
            torch.from_numpy(ids).to(self.device, non_blocking=True),
            torch.from_numpy(mask).to(self.device, non_blocking=True),
        )

    def prepare(self, obs: dict[str, dict[str, Any]], pad_to: int = 0) -> dict[str, Any]:
        torch = self.torch
        spec = self.spec
        videos = [obs["video"][k] for k in spec.video]
        join = np.concatenate if isinstance(videos[0], np.ndarray) else self.cat_video
        video = videos[0] if len(videos) == 1 else join(videos, 1)  # views along T
        b, frames = video.shape[0], video.shape[1]
        pixel_values, grid = self._pixels(video)
        texts = [row[0] for row in obs["language"][spec.language[0]]]
        input_ids, attention_mask = self._tokens(texts, frames, pad_to)
        state = np.zeros((b, 1, MAX_DIM), dtype=np.float32)
        col = 0
        for k, shape in spec.state.items():
            d = shape[-1]
            state[:, 0, col : col + d] = np.asarray(obs["state"][k], dtype=np.float32)[:, -1, :]
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
        b = next(iter(obs["video"].values())).shape[0]
        graphs = self.graphs if self.graphs is not None and self.graphs.size_for(b) is not None else None
        inputs = self.prepare(obs, pad_to=graphs.tokens if graphs else 0)
        t1 = time.perf_counter()
        with torch.inference_mode():
            if graphs is not None and inputs["input_ids"].shape[1] == graphs.tokens:
                pred_t = graphs.run(inputs)
            else:
                pred_t = self.model.get_action(inputs)["action_pred"]
        pred = pred_t[:, :, : self.action_dim].float().cpu().numpy()  # syncs
        t2 = time.perf_counter()
        action: dict[str, np.ndarray] = {}
        col = 0
        for k, d in self.spec.action.items():
            action[k] = pred[:, : self.spec.chunk_length, col : col + d]
            col += d
        info = {
            "note": RANDOM_LABEL,
            "tokens": int(inputs["input_ids"].shape[1]),
            "timings": {"prepare_ms": (t1 - t0) * 1e3, "forward_ms": (t2 - t1) * 1e3},
        }
        return action, info


class HeadGraphs:
    """The action head's whole flow-matching loop as one CUDA graph per batch size.

    The backbone (Qwen3-VL vision tower + 16 LLM layers) stays eager: its rotary position ids and
    variable-length vision attention are computed from the inputs on the host. The action head (VL
    layer norm + 4 self-attention layers over the backbone features, then the DiT passes, noise
    drawn inside) has static shapes once B and the token count are fixed, so it is captured per
    size in `sizes`; a batch is padded up to the next captured size (rows past B hold whatever an
    earlier call left and are dropped) and prompts are left-padded to `tokens`. Batches larger than
    the largest size, or prompts longer than `tokens`, run eagerly.
    """

    def __init__(self, policy: N17RandomPolicy, sizes: list[int], tokens: int) -> None:
        self.p = policy
        self.sizes = sizes
        self.tokens = tokens
        self.graphs: dict[int, Any] = {}
        self.static: dict[int, dict[str, Any]] = {}

    def size_for(self, b: int) -> int | None:
        for s in self.sizes:
            if s >= b:
                return s
        return None

    def _split(self, inputs: dict[str, Any]) -> tuple[Any, Any]:
        model = self.p.model
        bb_in, act_in = model.prepare_input(inputs)
        return model.backbone(bb_in), act_in

    def capture(self) -> None:
        from policy_workers.backends.gr00t import check_nested, stack, synthetic_observation, to_nested

        torch = self.p.torch
        from transformers.feature_extraction_utils import BatchFeature

        head = self.p.model.action_head
        for s in self.sizes:
            nested = []
            for i in range(s):
                n = to_nested(synthetic_observation(self.p.spec, i), self.p.spec)
                check_nested(n, self.p.spec)
                nested.append(n)
            with torch.inference_mode():
                bb_out, act_in = self._split(self.p.prepare(stack(nested, self.p.spec), pad_to=self.tokens))
                st = {k: bb_out[k].clone() for k in ("backbone_features", "backbone_attention_mask", "image_mask")}
                st.update(state=act_in["state"].clone(), embodiment_id=act_in["embodiment_id"].clone())

                def run(st: dict[str, Any] = st) -> Any:
                    bo = BatchFeature(
                        data={k: st[k] for k in ("backbone_features", "backbone_attention_mask", "image_mask")}
                    )
                    ai = BatchFeature(data={"state": st["state"], "embodiment_id": st["embodiment_id"]})
                    return head.get_action(bo, ai)["action_pred"]

                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        run()
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    st["out"] = run()
                torch.cuda.synchronize()
            self.graphs[s] = g
            self.static[s] = st

    def run(self, inputs: dict[str, Any]) -> Any:
        """Backbone eagerly, then the captured head; returns action_pred (B, horizon, 132)."""
        bb_out, act_in = self._split(inputs)
        b = act_in["state"].shape[0]
        s = self.size_for(b)
        st = self.static[s]
        for k in ("backbone_features", "backbone_attention_mask", "image_mask"):
            st[k][:b].copy_(bb_out[k])
        st["state"][:b].copy_(act_in["state"])
        st["embodiment_id"][:b].copy_(act_in["embodiment_id"])
        self.graphs[s].replay()
        return st["out"][:b]
