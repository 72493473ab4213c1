"""Probe (GPU host only): can a batch's frames go from the simulators' shared-memory segments to the
GPU with no CPU copy, and what would it cost?

Today a batch of 64 REAL_G1 requests is assembled by copying 64 x 393 KB from the shared-memory
segments (`broker.frames`) into one page-locked buffer (3-4 ms on the H100 host), then sent to the
GPU in one DMA. If the segments themselves were registered with CUDA as page-locked memory
(`cudaHostRegister`; the worker maps them read-only, so with `cudaHostRegisterReadOnly`), each
request's frames could be sent by DMA as it arrives. This script writes 64 rollouts' frames
through a real `FrameArena`, reads them back through a real `FrameReader`, and times:

- `assembly`: the current path (4-thread copy into a page-locked buffer, then one copy to the GPU);
- `pageable`: one copy to the GPU per request straight from the unregistered mapping;
- `registered`: the same after registering each segment's mapping (if CUDA accepts it), and
  the cost of registering and unregistering.

    python benchmarks/probe_host_register.py --out benchmarks/results/probe_host_register.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker import real_g1  # noqa: E402
from broker.codec import MsgpackNumpyCodec  # noqa: E402
from broker.frames import FrameArena, FrameReader  # noqa: E402
from policy_workers.backends._gr00t_layout import _copy_rows  # noqa: E402

B = 64
REGISTER_READ_ONLY = 0x08  # cudaHostRegisterReadOnly
REGISTER_PORTABLE = 0x01


def frames_through_shared_memory(arena: FrameArena) -> tuple[list[np.ndarray], list[Any]]:
    writer, reader = MsgpackNumpyCodec(), MsgpackNumpyCodec(frames=FrameReader())
    rng = np.random.default_rng(0)
    views = []
    for i in range(B):
        obs = {real_g1.VIDEO_KEY: rng.integers(0, 256, (1, real_g1.FRAMES, real_g1.IMAGE_SIZE,
                                                        real_g1.IMAGE_SIZE, 3), dtype=np.uint8)}
        views.append(reader.decode(writer.encode(arena.externalize(f"r{i}", obs)))[real_g1.VIDEO_KEY])
    maps = list(reader.frames._open.values())  # (mmap, last used) per segment
    return views, [m for m, _ in maps]


def timed(fn: Any, reps: int, torch: Any) -> dict[str, float]:
    fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": round(statistics.median(samples), 3), "min_ms": round(min(samples), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("this probe needs a CUDA GPU")
    cudart = torch.cuda.cudart()
    arena = FrameArena()
    result: dict[str, Any] = {"what": __doc__.splitlines()[0], "batch": B, "gpu": torch.cuda.get_device_name(0)}
    try:
        views, maps = frames_through_shared_memory(arena)
        shape = (B, *views[0].shape[1:])
        gpu = torch.empty(shape, dtype=torch.uint8, device="cuda")
        pinned = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        host = pinned.numpy()
        stream = torch.cuda.current_stream()

        def assembly() -> None:
            _copy_rows(views, host, threads=4)
            gpu.copy_(pinned, non_blocking=True)

        def per_request() -> None:
            for i, v in enumerate(views):
                gpu[i : i + 1].copy_(torch.from_numpy(v), non_blocking=True)

        import warnings

        warnings.simplefilter("ignore", UserWarning)  # read-only views: only read
        result["assembly"] = timed(assembly, args.reps, torch)
        result["pageable"] = timed(per_request, args.reps, torch)
        assert torch.equal(gpu[B - 1 : B].cpu(), torch.from_numpy(np.ascontiguousarray(views[-1])))
        ptrs = [(np.frombuffer(m, dtype=np.uint8).ctypes.data, len(m)) for m in maps]
        t = time.perf_counter()
        codes = [int(cudart.cudaHostRegister(p, n, REGISTER_READ_ONLY | REGISTER_PORTABLE)) for p, n in ptrs]
        result["register_ms_per_segment"] = round((time.perf_counter() - t) * 1e3 / len(ptrs), 3)
        result["register_codes"] = sorted(set(codes))
        result["segments"] = len(ptrs)
        if all(c == 0 for c in codes):
            result["registered"] = timed(per_request, args.reps, torch)
            gpu.zero_()
            per_request()
            stream.synchronize()
            result["registered_exact"] = bool(torch.equal(gpu.cpu(), torch.from_numpy(np.concatenate(views))))
        else:
            result["registered"] = "cudaHostRegister refused the read-only shared-memory mappings"
        t = time.perf_counter()
        for (p, _), code in zip(ptrs, codes, strict=True):
            if code == 0:
                cudart.cudaHostUnregister(p)
        result["unregister_ms_per_segment"] = round((time.perf_counter() - t) * 1e3 / len(ptrs), 3)
    finally:
        arena.close()
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
