"""Qwen3-VL vision attention over equal-sized images as one batched SDPA call.

Outside flash-attention-2, transformers' `Qwen3VLVisionAttention` splits the packed patch sequence
per image, after reading the image lengths back from the GPU (a host sync in every layer), and
runs one attention call per image and layer: for REAL_G1 at B = 64 that is 128 images x 24 layers
of small kernels launched from Python, and the N1.7 forward becomes host-bound (py-spy on an
H100: 38 % of the inference thread in that attention). When every image has the same number of
patches - always here, since the backend resizes every frame to 256 x 256 - the same attention
is one SDPA call over (images, heads, patches, head_dim): no sync, one launch per layer.

`batch_vision_attention(model, patches_per_image)` installs that forward on every vision
attention module of `model`, but only after checking on a probe that it matches the stock one;
otherwise the stock forward stays and the reason is returned.
"""

from __future__ import annotations

import sys
import types
from typing import Any

CLASS_NAME = "Qwen3VLVisionAttention"


def _batched_forward(patches: int, rotary: Any, sdpa: Any) -> Any:
    def forward(self: Any, hidden_states: Any, cu_seqlens: Any, rotary_pos_emb: Any = None,
                position_embeddings: Any = None, **kwargs: Any) -> Any:
        seq = hidden_states.shape[0]
        images = cu_seqlens.shape[0] - 1
        if position_embeddings is None or images * patches != seq:  # not the layout this was checked for
            return self._rq_stock_forward(hidden_states, cu_seqlens, rotary_pos_emb=rotary_pos_emb,
                                          position_embeddings=position_embeddings, **kwargs)
        q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = rotary(q, k, cos, sin)
        q, k, v = (t.reshape(images, patches, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = sdpa(q, k, v, scale=self.scaling)  # (images, heads, patches, head_dim)
        return self.proj(out.transpose(1, 2).reshape(seq, -1))

    return forward


def batch_vision_attention(model: Any, patches_per_image: int, torch: Any) -> str:
    """Swap in the batched forward; returns "batched" or why the stock forward was kept."""
    modules = [m for m in model.modules() if type(m).__name__ == CLASS_NAME]
    if not modules:
        return f"stock (no {CLASS_NAME} in the model)"
    first = modules[0]
    impl = getattr(getattr(first, "config", None), "_attn_implementation", None)
    if impl == "flash_attention_2":
        return "stock (flash-attention-2 already runs all images in one call)"
    rotary = getattr(sys.modules[type(first).__module__], "apply_rotary_pos_emb_vision", None)
    if rotary is None:
        return "stock (this transformers has no apply_rotary_pos_emb_vision)"
    forward = _batched_forward(patches_per_image, rotary, torch.nn.functional.scaled_dot_product_attention)
    for m in modules:
        m._rq_stock_forward = m.forward
        m.forward = types.MethodType(forward, m)
    problem = _probe(first, patches_per_image, torch)
    if problem:
        for m in modules:
            m.forward = m._rq_stock_forward
        return f"stock ({problem})"
    return "batched"


def use_stock(model: Any, stock: bool) -> None:
    """Switch installed modules between the stock (True) and the batched forward (A/B timing)."""
    for m in model.modules():
        if type(m).__name__ == CLASS_NAME and hasattr(m, "_rq_stock_forward"):
            if stock:
                m._rq_batched_forward = m.__dict__.get("_rq_batched_forward", m.forward)
                m.forward = m._rq_stock_forward
            elif "_rq_batched_forward" in m.__dict__:
                m.forward = m._rq_batched_forward


def _probe(module: Any, patches: int, torch: Any, images: int = 3) -> str | None:
    """Stock vs batched forward on random inputs for `images` images; None when they agree."""
    p = next(module.parameters())
    dim = module.qkv.in_features
    head_dim = dim // module.num_heads
    gen = torch.Generator(device=p.device).manual_seed(0)
    x = torch.randn(images * patches, dim, generator=gen, device=p.device).to(p.dtype)
    angles = torch.randn(images * patches, head_dim, generator=gen, device=p.device)
    pos = (angles.cos().to(p.dtype), angles.sin().to(p.dtype))
    cu = torch.arange(0, images + 1, device=p.device, dtype=torch.int32) * patches
    try:
        with torch.inference_mode():
            want = module._rq_stock_forward(x, cu, position_embeddings=pos)
            got = module.forward(x, cu, position_embeddings=pos)
    except Exception as e:  # a transformers whose attention differs from the one this was written for
        return f"batched forward failed on a probe: {type(e).__name__}: {str(e)[:120]}"
    err = (got.float() - want.float()).abs().max().item()
    scale = want.float().abs().max().item() or 1.0
    if got.shape != want.shape or err > 0.02 * scale:
        return f"batched forward disagreed on a probe: max |diff| {err:.3g} vs max |out| {scale:.3g}"
    return None
