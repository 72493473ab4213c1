"""Capture step: the N1.7 action head's whole flow-matching loop as one CUDA graph per batch size.

The backbone (Qwen3-VL vision tower + 16 LLM layers) stays eager: its rotary position ids and
variable-length vision attention are computed from the inputs on the host, which a graph cannot
replay. The action head (VL layer norm + 4 self-attention layers over the backbone features, then
`num_inference_timesteps` passes of the 32-layer DiT, noise drawn inside) has static shapes once
the batch size and the token count are fixed, so it is captured per batch size in `sizes`; a batch
is padded up to the next captured size (rows past B are left over from earlier calls and are
dropped), and the prompt is left-padded to `seq_len` tokens so one graph fits every instruction.
Larger batches than the largest captured size run eagerly.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np


class CapturedN17:
    description = ("CUDA graphs (torch.cuda.CUDAGraph) of the action head's flow-matching loop per batch size; "
                   "backbone eager; batch padded to the next captured size; prompt left-padded to a fixed length")

    def __init__(self, policy: Any, sizes: list[int], seq_len: int = 160) -> None:
        self.p = policy
        self.torch = policy.torch
        self.sizes = sorted(sizes)
        self.seq_len = seq_len
        self.graphs: dict[int, Any] = {}
        self.static: dict[int, dict[str, Any]] = {}

    def size_for(self, b: int) -> int | None:
        i = bisect.bisect_left(self.sizes, b)
        return self.sizes[i] if i < len(self.sizes) else None

    def _backbone(self, inputs: dict[str, Any]):
        from transformers.feature_extraction_utils import BatchFeature

        model = self.p.model
        bb_in, act_in = model.prepare_input(inputs)
        return model.backbone(bb_in), act_in, BatchFeature

    def capture(self) -> None:
        from benchmarks.gpu_bench import nested_obs
        from policy_workers.backends.gr00t import check_nested, stack

        torch = self.torch
        head = self.p.model.action_head
        for s in self.sizes:
            nested = [nested_obs(i) for i in range(s)]
            for n in nested:
                check_nested(n, self.p.spec)
            with torch.inference_mode():
                inputs = self.p.prepare(stack(nested, self.p.spec), pad_to=self.seq_len)
                bb_out, act_in, BatchFeature = self._backbone(inputs)
                st = {
                    "backbone_features": bb_out["backbone_features"].clone(),
                    "backbone_attention_mask": bb_out["backbone_attention_mask"].clone(),
                    "image_mask": bb_out["image_mask"].clone(),
                    "state": act_in["state"].clone(),
                    "embodiment_id": act_in["embodiment_id"].clone(),
                }

                def run() -> Any:
                    bo = BatchFeature(data={k: st[k] for k in ("backbone_features", "backbone_attention_mask", "image_mask")})
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

    def get_action(self, obs: dict[str, dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        torch = self.torch
        b = next(iter(obs["video"].values())).shape[0]
        s = self.size_for(b)
        if s is None:
            return self.p.get_action(obs)
        with torch.inference_mode():
            inputs = self.p.prepare(obs, pad_to=self.seq_len)
            if inputs["input_ids"].shape[1] != self.seq_len:
                return self.p.get_action(obs)
            bb_out, act_in, _ = self._backbone(inputs)
            st = self.static[s]
            st["backbone_features"][:b].copy_(bb_out["backbone_features"])
            st["backbone_attention_mask"][:b].copy_(bb_out["backbone_attention_mask"])
            st["image_mask"][:b].copy_(bb_out["image_mask"])
            st["state"][:b].copy_(act_in["state"])
            st["embodiment_id"][:b].copy_(act_in["embodiment_id"])
            self.graphs[s].replay()
            pred = st["out"][:b, :, : self.p.action_dim].float().cpu().numpy()
        action, col = {}, 0
        for k, d in self.p.spec.action.items():
            action[k] = pred[:, : self.p.spec.chunk_length, col:col + d]
            col += d
        return action, {"note": self.p.label, "captured_size": s}

    def compare(self, obs: dict[str, dict[str, Any]]) -> float | None:
        """‖captured − eager‖/‖eager‖ with the same seed before each (None if not comparable)."""
        torch = self.torch
        torch.manual_seed(1234)
        a, _ = self.p.get_action(obs)
        torch.manual_seed(1234)
        c, _ = self.get_action(obs)
        ea = np.concatenate([a[k].ravel() for k in a])
        ec = np.concatenate([c[k].ravel() for k in c])
        if not np.isfinite(ec).all():
            return float("nan")
        return round(float(np.linalg.norm(ec - ea) / (np.linalg.norm(ea) + 1e-12)), 5)
