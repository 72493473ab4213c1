"""CUDA graphs of the N1.7 network (random weights) per batch size: past the eager model.

Eagerly, the N1.7 forward launches thousands of small kernels from Python and reads values back
mid-forward (M-RoPE positions, image-token counts, vision grid bookkeeping), so at small batches
it is bound by the host, and at every batch its speed follows the host's. A CUDA graph replays the
whole launch sequence in one call, but only for static shapes and with nothing read back. Two
scopes, one graph per batch size in `sizes`, a batch padded up to the next captured size (rows
past B hold an earlier call's inputs and are dropped), prompts left-padded to `tokens`:

- `ForwardGraphs` ("forward", the default): the whole `get_action` - pixel preprocessing, the
  Qwen3-VL vision tower, the 16 LLM layers with DeepStack, the action head's flow-matching loop
  (noise drawn inside). What the eager model works out on the host mid-forward becomes an input
  computed beforehand: M-RoPE positions from the model's own `get_rope_index` (once per prompt
  length), image-token indices from the prompt layout, the vision tower's grid bookkeeping through
  transformers' precompute hooks (once per size). The unused LM head and final norm are skipped.
  It needs the batched vision attention (`_vision_attention`). After capture it is checked
  against the eager model on prompts of different lengths; if it disagrees, or capture fails,
  `capture()` falls back to the head scope and says why.
- `HeadGraphs` ("head"): only the action head; the backbone stays eager.

Batches larger than the largest size, other frame shapes, or longer prompts run eagerly.
"""

from __future__ import annotations

import gc
import time
import warnings
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from rolloutq.policy_workers.backends._gr00t_layout import VideoRows

if TYPE_CHECKING:
    from rolloutq.policy_workers.backends._gr00t_n17 import N17RandomPolicy

SCOPES = ("forward", "head")
CHECK_TOLERANCE = 0.02  # relative L2 error, backbone features and action chunks, same noise seed


class Graphs(Protocol):
    scope: str
    tokens: int

    def size_for(self, b: int) -> int | None: ...

    def accepts(self, host: dict[str, Any]) -> bool: ...

    def run(self, inputs: dict[str, Any]) -> Any: ...


def _sized(sizes: list[int], b: int) -> int | None:
    for s in sizes:
        if s >= b:
            return s
    return None


def _synthetic_batch(policy: N17RandomPolicy, b: int, texts: list[str] | None = None) -> dict[str, Any]:
    from rolloutq.policy_workers.backends._gr00t_layout import check_nested, stack, synthetic_observation, to_nested

    nested = []
    for i in range(b):
        n = to_nested(synthetic_observation(policy.spec, i), policy.spec)
        if texts:
            n["language"] = {policy.spec.language[0]: [[texts[i % len(texts)]]]}
        check_nested(n, policy.spec)
        nested.append(n)
    return stack(nested, policy.spec)


def _rel_err(got: Any, want: Any) -> float:
    got, want = got.float(), want.float()
    return float((got - want).norm() / (want.norm() + 1e-12))


class ForwardGraphs:
    """The whole N1.7 `get_action` as one CUDA graph per batch size (see the module docstring)."""

    scope = "forward"

    def __init__(self, policy: N17RandomPolicy, sizes: list[int], tokens: int) -> None:
        self.p = policy
        self.sizes = sizes
        self.tokens = tokens
        shapes = [tuple(s) for s in policy.spec.video.values()]
        if len({s[1:] for s in shapes}) != 1:
            raise ValueError(f"video keys differ in frame size {shapes}: they are joined along T")
        self.video_shape = (sum(s[0] for s in shapes), *shapes[0][1:])  # (T, H, W, 3)
        self.frames = self.video_shape[0]
        self.graphs: dict[int, Any] = {}
        self.static: dict[int, dict[str, Any]] = {}
        qwen = policy.model.backbone.model.model
        self.qwen, self.visual, self.lm = qwen, qwen.visual, qwen.language_model
        self.image_token = int(qwen.config.image_token_id)
        self.tokens_per_frame = 0

    def size_for(self, b: int) -> int | None:
        return _sized(self.sizes, b)

    def accepts(self, host: dict[str, Any]) -> bool:
        ids = host["input_ids"]
        b = ids.shape[0]
        return (
            self.size_for(b) is not None
            and tuple(host["video"].shape[1:]) == self.video_shape
            and ids.shape[1] == self.tokens
            and host["image_index"].size == b * self.frames * self.tokens_per_frame
        )

    # -- static buffers --------------------------------------------------------------------
    def _buffers(self, s: int) -> dict[str, Any]:
        from transformers import vision_utils as vu

        p, torch, L = self.p, self.p.torch, self.tokens
        dev = p.device
        visual = self.visual
        grid = p.image_grid(s * self.frames)
        interp_indices, interp_weights = vu.get_vision_interpolation_indices_and_weights(
            grid,
            num_grid_per_side=visual.num_grid_per_side,
            mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners,
            spatial_merge_size=visual.config.spatial_merge_size,
        )
        cu_seqlens, max_seqlen = vu.get_vision_attention_seqlens(grid, visual.config)
        vision = {
            "interp_indices": interp_indices,
            "interp_weights": interp_weights,
            "position_ids": vu.get_vision_position_ids(grid, visual.spatial_merge_size),
            "cu_seqlens": cu_seqlens,
            **({"max_seqlen": max_seqlen} if max_seqlen is not None else {}),
        }
        return {
            "video": torch.zeros((s, *self.video_shape), dtype=torch.uint8, device=dev),
            "input_ids": torch.zeros((s, L), dtype=torch.long, device=dev),
            "attention_mask": torch.zeros((s, L), dtype=torch.long, device=dev),
            "positions": torch.zeros((3, s, L), dtype=torch.long, device=dev),
            "image_index": torch.zeros((s * self.frames * self.tokens_per_frame,), dtype=torch.long, device=dev),
            "state": torch.zeros((s, 1, p.state_width), dtype=torch.bfloat16, device=dev),
            "embodiment_id": torch.full((s,), p.embodiment_id, dtype=torch.long, device=dev),
            "grid": grid,
            "vision": vision,
            "causal": torch.ones((L, L), dtype=torch.bool, device=dev).tril(),
        }

    def _load(self, st: dict[str, Any], host: dict[str, Any]) -> int:
        """Copy a batch's host inputs into the first rows of a size's static buffers."""
        torch = self.p.torch
        b = host["input_ids"].shape[0]
        video = host["video"]
        with warnings.catch_warnings():  # read-only views (shared memory, Redis bytes): only read
            warnings.simplefilter("ignore", UserWarning)
            if isinstance(video, VideoRows):  # frames left where they were: one DMA per run of rows
                row = 0
                for source, first, n in video.runs:
                    st["video"][row : row + n].copy_(torch.from_numpy(source[first : first + n]), non_blocking=True)
                    row += n
            else:
                if not isinstance(video, torch.Tensor):
                    video = torch.from_numpy(np.ascontiguousarray(video))
                st["video"][:b].copy_(video, non_blocking=True)
        for k in ("input_ids", "attention_mask", "state"):
            st[k][:b].copy_(torch.from_numpy(host[k]), non_blocking=True)
        st["positions"][:, :b].copy_(torch.from_numpy(host["positions"]), non_blocking=True)
        idx = host["image_index"]
        st["image_index"][: idx.size].copy_(torch.from_numpy(idx), non_blocking=True)
        return b

    # -- the forward, written for capture --------------------------------------------------
    def forward(self, st: dict[str, Any]) -> tuple[Any, Any]:
        """(backbone features (s, L, 2048), action_pred (s, horizon, 132)) from a size's static buffers."""
        from transformers.feature_extraction_utils import BatchFeature

        p = self.p
        vo = self.visual(p.pixel_values(st["video"]), grid_thw=st["grid"], return_dict=True, **st["vision"])
        ids, am, idx = st["input_ids"], st["attention_mask"], st["image_index"]
        emb = self.lm.embed_tokens(ids)
        s, L, D = emb.shape
        h = emb.reshape(-1, D).index_copy(0, idx, vo.pooler_output.to(emb.dtype)).view(s, L, D)
        positions = st["positions"]
        rope = self.lm.rotary_emb(h, positions)
        mask = st["causal"][None, None] & (am != 0)[:, None, None, :]  # causal & key padding, as sdpa_mask
        deepstack = vo.deepstack_features or []
        for i, layer in enumerate(self.lm.layers):
            out = layer(h, attention_mask=mask, position_ids=positions[0], past_key_values=None,
                        position_embeddings=rope)
            h = out[0] if isinstance(out, tuple) else out
            if i < len(deepstack):
                flat = h.reshape(-1, D).clone()
                flat[idx] = flat[idx] + deepstack[i].to(flat.dtype)
                h = flat.view(s, L, D)
        backbone = BatchFeature(
            data={"backbone_features": h, "backbone_attention_mask": am == 1, "image_mask": ids == self.image_token}
        )
        action_in = BatchFeature(data={"state": st["state"], "embodiment_id": st["embodiment_id"]})
        return h, p.model.action_head.get_action(backbone, action_in)["action_pred"]

    # -- capture, check, run ---------------------------------------------------------------
    def capture(self) -> None:
        p, torch = self.p, self.p.torch
        probe = p.host_inputs(_synthetic_batch(p, 1, ["pick"]), pad_to=self.tokens, layout=True)
        if probe["input_ids"].shape[1] != self.tokens:
            raise ValueError(f"cuda_graph_tokens={self.tokens} is shorter than a one-word prompt "
                             f"({probe['input_ids'].shape[1]} tokens with the frames): raise it")
        self.tokens_per_frame = probe["image_index"].size // self.frames
        pool = torch.cuda.graph_pool_handle()
        for s in sorted(self.sizes, reverse=True):  # largest first: the smaller ones reuse its pool
            st = self._buffers(s)
            self._load(st, p.host_inputs(_synthetic_batch(p, s, ["pick"]), pad_to=self.tokens, layout=True))
            with torch.inference_mode():
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):
                        self.forward(st)
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    st["features"], st["out"] = self.forward(st)
            torch.cuda.synchronize()
            self.graphs[s] = g
            self.static[s] = st

    def verify(self, seed: int = 1234) -> dict[str, Any]:
        """The captured forward against the eager model on prompts of different lengths (so rows
        are padded differently), the same noise seed for both."""
        p, torch = self.p, self.p.torch
        s = next((x for x in self.sizes if x >= 2), self.sizes[0])
        texts = ["pick", "pick up the apple and place it"]  # 1 and 7 words: rows padded differently
        host = p.host_inputs(_synthetic_batch(p, s, texts), pad_to=self.tokens, layout=True)
        with torch.inference_mode():
            inputs = p.device_inputs(host)
            bb_in, _ = p.model.prepare_input(inputs)
            want_features = p.model.backbone(bb_in)["backbone_features"]
            torch.manual_seed(seed)
            want = p.model.get_action(inputs)["action_pred"]
            self._load(self.static[s], host)
            torch.manual_seed(seed)
            self.graphs[s].replay()
            st = self.static[s]
            valid = inputs["attention_mask"].bool()
            result = {
                "batch": s,
                "feature_rel_err": round(_rel_err(st["features"][valid], want_features[valid]), 5),
                "action_rel_err": round(_rel_err(st["out"], want), 5),
                "finite": bool(torch.isfinite(st["out"]).all().item()),
            }
        torch.manual_seed(p.seed)
        result["ok"] = (
            result["finite"]
            and result["feature_rel_err"] <= CHECK_TOLERANCE
            and result["action_rel_err"] <= CHECK_TOLERANCE
        )
        return result

    def run(self, host: dict[str, Any]) -> Any:
        """Load a batch's host inputs, replay its size's graph; returns action_pred (B, horizon, 132)."""
        b = host["input_ids"].shape[0]
        s = self.size_for(b)
        assert s is not None
        self._load(self.static[s], host)
        self.graphs[s].replay()
        return self.static[s]["out"][:b]


class HeadGraphs:
    """The action head's whole flow-matching loop as one CUDA graph per batch size.

    The backbone (Qwen3-VL vision tower + 16 LLM layers) stays eager. The action head (VL layer
    norm + 4 self-attention layers over the backbone features, then the DiT passes, noise drawn
    inside) has static shapes once B and the token count are fixed.
    """

    scope = "head"

    def __init__(self, policy: N17RandomPolicy, sizes: list[int], tokens: int) -> None:
        self.p = policy
        self.sizes = sizes
        self.tokens = tokens
        self.graphs: dict[int, Any] = {}
        self.static: dict[int, dict[str, Any]] = {}

    def size_for(self, b: int) -> int | None:
        return _sized(self.sizes, b)

    def accepts(self, host: dict[str, Any]) -> bool:
        return self.size_for(host["input_ids"].shape[0]) is not None and host["input_ids"].shape[1] == self.tokens

    def _split(self, inputs: dict[str, Any]) -> tuple[Any, Any]:
        model = self.p.model
        bb_in, act_in = model.prepare_input(inputs)
        return model.backbone(bb_in), act_in

    def capture(self) -> None:
        from transformers.feature_extraction_utils import BatchFeature

        torch = self.p.torch
        head = self.p.model.action_head
        for s in self.sizes:
            with torch.inference_mode():
                bb_out, act_in = self._split(self.p.prepare(_synthetic_batch(self.p, s, ["pick"]), pad_to=self.tokens))
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
        assert s is not None
        st = self.static[s]
        for k in ("backbone_features", "backbone_attention_mask", "image_mask"):
            st[k][:b].copy_(bb_out[k])
        st["state"][:b].copy_(act_in["state"])
        st["embodiment_id"][:b].copy_(act_in["embodiment_id"])
        self.graphs[s].replay()
        return st["out"][:b]


def capture(policy: N17RandomPolicy, sizes: list[int], tokens: int, scope: str) -> tuple[Graphs, dict[str, Any]]:
    """Capture `scope` for `sizes`; returns the graphs and a report (scope used, check, seconds).
    A forward that fails to capture or disagrees with the eager model falls back to the head."""
    if scope not in SCOPES:
        raise ValueError(f"cuda_graph_scope must be one of {SCOPES}, got {scope!r}")
    torch = policy.torch
    report: dict[str, Any] = {"requested_scope": scope, "sizes": sizes, "tokens": tokens}
    t0 = time.perf_counter()
    if scope == "forward":
        reason = ""
        if getattr(policy, "vision_attention", "") != "batched":
            reason = f"needs the batched vision attention; this model has {policy.vision_attention!r}"
        else:
            graphs: Any = None
            try:
                graphs = ForwardGraphs(policy, sizes, tokens)
                graphs.capture()
                check = graphs.verify()
                report["check"] = check
                if check["ok"]:
                    report.update(scope="forward", capture_s=round(time.perf_counter() - t0, 1))
                    return graphs, report
                reason = f"the captured forward disagreed with the eager model: {check}"
            except Exception as e:  # a transformers whose internals differ from the ones this was written for
                reason = f"capturing the forward failed: {type(e).__name__}: {str(e)[:300]}"
            del graphs
            gc.collect()
            torch.cuda.empty_cache()
        report["forward_refused"] = reason
    head = HeadGraphs(policy, sizes, tokens)
    head.capture()
    report.update(scope="head", capture_s=round(time.perf_counter() - t0, 1))
    return head, report
