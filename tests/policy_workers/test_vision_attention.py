"""Batched vision attention (`rolloutq.policy_workers.backends._vision_attention`) against a per-image loop.

`Qwen3VLVisionAttention` below is a TEST DOUBLE written for this test, not transformers' class:
it has the same name, the same projections and the same per-image semantics (rotary on q and k,
one softmax attention per image over that image's patches), so the swap can be checked on the CPU,
where the real 3 B network does not run. The real module is checked at load by the probe (see
`test_n17_random_network_one_batched_request` on the GPU machine).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from rolloutq.policy_workers.backends._vision_attention import batch_vision_attention, use_stock  # noqa: E402


def apply_rotary_pos_emb_vision(q, k, cos, sin):
    def rot(x):
        a, b = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-b, a), dim=-1)

    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return q * cos + rot(q) * sin, k * cos + rot(k) * sin


class Qwen3VLVisionAttention(torch.nn.Module):
    """TEST DOUBLE (see module docstring): per-image attention over a packed patch sequence."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.scaling = (dim // heads) ** -0.5
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.calls = 0

    def forward(self, hidden_states, cu_seqlens, rotary_pos_emb=None, position_embeddings=None, **kwargs):
        self.calls += 1
        seq = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)
        outs = []
        for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True):
            qi, ki, vi = (t[a:b].transpose(0, 1) for t in (q, k, v))  # (heads, n, d)
            w = torch.softmax(qi @ ki.transpose(-1, -2) * self.scaling, dim=-1)
            outs.append((w @ vi).transpose(0, 1))
        return self.proj(torch.cat(outs).reshape(seq, -1))


class Tower(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Qwen3VLVisionAttention() for _ in range(2)])

    def forward(self, x, cu, pos):
        for b in self.blocks:
            x = x + b(x, cu, position_embeddings=pos)
        return x


def inputs(images: int, patches: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(images * patches, 32, generator=g)
    ang = torch.randn(images * patches, 8, generator=g)
    cu = torch.arange(images + 1, dtype=torch.int32) * patches
    return x, cu, (ang.cos(), ang.sin())


def test_batched_attention_matches_the_per_image_loop_and_skips_it():
    torch.manual_seed(0)
    tower = Tower().eval()
    x, cu, pos = inputs(images=6, patches=16)
    with torch.no_grad():
        want = tower(x, cu, pos)
        assert batch_vision_attention(tower, 16, torch) == "batched"
        calls = [b.calls for b in tower.blocks]
        got = tower(x, cu, pos)
        assert [b.calls for b in tower.blocks] == calls  # the per-image loop no longer ran
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        use_stock(tower, True)
        torch.testing.assert_close(tower(x, cu, pos), want)
        assert [b.calls for b in tower.blocks] == [c + 1 for c in calls]
        use_stock(tower, False)
        torch.testing.assert_close(tower(x, cu, pos), want, atol=1e-5, rtol=1e-4)


def test_images_of_another_size_fall_back_to_the_stock_loop():
    tower = Tower().eval()
    assert batch_vision_attention(tower, 16, torch) == "batched"
    x, cu, pos = inputs(images=3, patches=20)  # not the 16 patches per image it was set up for
    with torch.no_grad():
        got = tower(x, cu, pos)
        use_stock(tower, True)
        torch.testing.assert_close(got, tower(x, cu, pos))
    assert [b.calls for b in tower.blocks] == [3, 2]  # the probe (first module only), then one per forward


def test_a_forward_that_disagrees_keeps_the_stock_one(monkeypatch):
    import rolloutq.policy_workers.backends._vision_attention as va

    tower = Tower().eval()
    monkeypatch.setattr(va, "_batched_forward", lambda *a: lambda self, h, cu, **kw: self.proj(h))  # a wrong layout
    assert batch_vision_attention(tower, 16, torch).startswith("stock (batched forward disagreed")
    x, cu, pos = inputs(images=2, patches=16)
    with torch.no_grad():
        tower(x, cu, pos)
    assert all(b.calls == 2 for b in tower.blocks[:1]) and tower.blocks[1].calls == 1


def test_models_without_qwen_vision_attention_are_left_alone():
    assert batch_vision_attention(torch.nn.Linear(2, 2), 16, torch).startswith("stock (no Qwen3VLVisionAttention")
