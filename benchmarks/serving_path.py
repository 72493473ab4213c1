"""What one request costs the policy worker's event loop, step by step, on this host's CPU.

In a closed loop at N = 64 every simulator waits while the worker reads, decodes and checks the
batch's last requests and encodes and writes its replies (docs/benchmarks.md, "the policy
worker's cost per request"). This times those steps on REAL_G1 observations (2x256x256x3 frames in shared memory,
7 state groups, text) and REAL_G1 action chunks (9 keys x 40 steps), 64 at a time:

- accept: entry fields -> Request, observation decode (codec + shared-frame lookup), schema check,
  and the worker's whole admission of each entry (`Admission.admit`); and the batch assembly that
  follows on the inference thread (64 frames from shared memory into one page-locked buffer)
  with 1, 4, 8 and 12 copy threads;
- reply: cutting a (64, 40, 132) action batch into chunks, encoding them, reply fields, and the
  write of 64 replies + XACK + XDEL to a real redis-server in one pipeline and in groups of 16.

General paths are timed beside the fast ones they stand behind (the schema check's general form,
msgpack's own packer), so a run on another host shows both. No GPU, no model: the figures are the
worker's own CPU cost per request, and run on the GPU host they calibrate its CPU against this one.

    python benchmarks/serving_path.py --out benchmarks/out/serving_path_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rolloutq.broker import real_g1  # noqa: E402
from rolloutq.broker.admission import Admission  # noqa: E402
from rolloutq.broker.batcher import signature  # noqa: E402
from rolloutq.broker.codec import MsgpackNumpyCodec  # noqa: E402
from rolloutq.broker.codec_encode import msgpack_default  # noqa: E402
from rolloutq.broker.connection import connect_async  # noqa: E402
from rolloutq.broker.embedded import EmbeddedRedis  # noqa: E402
from rolloutq.broker.frames import FrameArena, FrameReader  # noqa: E402
from rolloutq.broker.jobs import Job  # noqa: E402
from rolloutq.broker.keys import GROUP, Keys  # noqa: E402
from rolloutq.broker.schema import Reply, Request, Status  # noqa: E402
from rolloutq.broker.settings import BatchSettings, RedisSettings, WorkerSettings  # noqa: E402
from rolloutq.policy_workers.backends._gr00t_layout import REAL_G1, _copy_rows, split  # noqa: E402
from rolloutq.policy_workers.base import PolicyMetadata  # noqa: E402
from rolloutq.policy_workers.batching import SchemaChecker, check_schema  # noqa: E402
from rolloutq.policy_workers.loop import _Handler  # noqa: E402

B = 64


def observation(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    obs: dict[str, Any] = {real_g1.VIDEO_KEY: rng.integers(0, 256, (1, real_g1.FRAMES, real_g1.IMAGE_SIZE,
                                                                     real_g1.IMAGE_SIZE, 3), dtype=np.uint8)}
    for k, d in real_g1.STATE_DIMS.items():
        obs[k] = rng.standard_normal((1, 1, d)).astype(np.float32)
    obs[real_g1.TEXT_KEY] = [["pick up the apple and place it on the plate"]]
    return obs


def schema() -> dict[str, dict[str, Any]]:
    """The GR00T backend's published REAL_G1 schema (`Gr00tBackend.metadata`)."""
    out: dict[str, dict[str, Any]] = {real_g1.VIDEO_KEY: {"dtype": "uint8", "shape": [1, real_g1.FRAMES,
                                                                                       real_g1.IMAGE_SIZE,
                                                                                       real_g1.IMAGE_SIZE, 3]}}
    for k, d in real_g1.STATE_DIMS.items():
        out[k] = {"dtype": "float32", "shape": [1, 1, d]}
    out[real_g1.TEXT_KEY] = {"kind": "text"}
    return out


def timed(fn: Callable[[], Any], reps: int) -> float:
    """Median over `reps` of one call of `fn` (which handles all B requests), in µs per request."""
    fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return round(statistics.median(samples) * 1e6 / B, 2)


class _NoBackend:
    """The handler's backend is never called here: only its schema check runs."""


def accept_side(reps: int, keys: Keys, arena: FrameArena) -> dict[str, float]:
    reader_codec = MsgpackNumpyCodec(frames=FrameReader())
    writer = MsgpackNumpyCodec()
    entries = []
    for i in range(B):
        payload = writer.encode(arena.externalize(f"r{i}", observation(i)))
        fields = Request(f"r{i}", 1, payload, 60_000).to_fields()
        entries.append({k.encode(): v.encode() if isinstance(v, str) else v for k, v in fields.items()})
    requests = [Request.from_fields(f) for f in entries]
    decoded = [reader_codec.decode(r.obs) for r in requests]
    sch = schema()
    checker = SchemaChecker(sch)
    assert all(checker(o) is None for o in decoded), "the benchmark's observations must fit the schema"
    meta = PolicyMetadata(model_id="none", observation_schema=sch, action_schema={}, chunk_length=40,
                          action_horizon=8)
    stream = keys.requests("p", 0)
    admission = Admission(_Handler(_NoBackend(), meta), reader_codec, keys,
                          WorkerSettings(policy="p", batch=BatchSettings(max_batch_size=B)), {stream: 0}, B)

    def accept_all() -> None:
        now = time.time() * 1000
        jobs = [admission.admit(stream, b"%d-%d" % (int(now), i), f, 1, now) for i, f in enumerate(entries)]
        refused = [j for j in jobs if not isinstance(j, Job)]
        if refused:
            raise RuntimeError(f"admission refused {len(refused)} of {B} requests: {refused[0]}")

    frames = [o[real_g1.VIDEO_KEY] for o in decoded]  # read-only views of the simulators' segments
    buffer, kind = batch_buffer(frames)
    assembly = {f"assembly_{n}_threads_us": timed(lambda n=n: _copy_rows(frames, buffer, threads=n), reps)
                for n in (1, 4, 8, 12)}
    assert np.array_equal(buffer[B - 1:], frames[-1])
    return {
        "batch_buffer": kind,
        **assembly,
        "request_fields_us": timed(lambda: [Request.from_fields(f) for f in entries], reps),
        "decode_us": timed(lambda: [reader_codec.decode(r.obs) for r in requests], reps),
        "schema_check_us": timed(lambda: [checker(o) for o in decoded], reps),
        "schema_check_general_us": timed(lambda: [check_schema(o, sch) for o in decoded], reps),
        "signature_us": timed(lambda: [signature(o) for o in decoded], reps),
        "accept_all_us": timed(accept_all, reps),
    }


def batch_buffer(frames: list[np.ndarray]) -> tuple[np.ndarray, str]:
    """Where a batch's frames are assembled: page-locked memory where CUDA is there, as the GR00T
    backend does (`N17RandomPolicy.batch_buffer`), else ordinary memory."""
    shape = (len(frames), *frames[0].shape[1:])
    try:
        import torch

        if torch.cuda.is_available():
            t = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            t.numpy().fill(0)
            return t.numpy(), "page-locked (torch, CUDA)"
    except ImportError:
        pass
    buf = np.empty(shape, np.uint8)
    buf.fill(0)
    return buf, "ordinary memory (no CUDA here)"


def reply_side(reps: int, url: str) -> dict[str, float]:
    rng = np.random.default_rng(0)
    width = sum(REAL_G1.action.values())
    pred = rng.standard_normal((B, 50, 132)).astype(np.float32)
    action, col = {}, 0
    for k, d in REAL_G1.action.items():  # views into the model's output, as N17RandomPolicy returns them
        action[k] = pred[:, :REAL_G1.chunk_length, col:col + d]
        col += d
    assert col == width
    chunks = split(action, [1] * B)
    for c in chunks:
        c["info.note"] = "GR00T N1.7 network, random weights"
    codec = MsgpackNumpyCodec()
    payloads = [codec.encode(c) for c in chunks]
    out = {
        "split_us": timed(lambda: split(action, [1] * B), reps),
        "encode_us": timed(lambda: [codec.encode(c) for c in chunks], reps),
        "encode_msgpack_packb_us": timed(lambda: [msgpack.packb(c, default=msgpack_default, use_bin_type=True)
                                                  for c in chunks], reps),
        "reply_fields_us": timed(lambda: [Reply(1, Status.OK, action=p, queue_ms=1.0, infer_ms=200.0, batch=B,
                                                worker="w").to_fields() for p in payloads], reps),
        "reply_bytes": len(payloads[0]),
    }
    fields = [Reply(1, Status.OK, action=p, batch=B, worker="w").to_fields() for p in payloads]

    async def write(group: int) -> float:
        r = connect_async(RedisSettings(url=url))
        stream = "bench:req"
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        samples = []
        for _ in range(reps + 1):
            ids = [await r.xadd(stream, {"x": "1"}) for _ in range(B)]
            await r.xreadgroup(GROUP, "w", {stream: ">"}, count=B)
            t = time.perf_counter()
            pending = []
            for start in range(0, B, group):
                pipe = r.pipeline(transaction=False)
                for i in range(start, min(B, start + group)):
                    pipe.xadd(f"bench:reply:{i}", fields[i], maxlen=64, approximate=True)
                pipe.xack(stream, GROUP, *ids[start:start + group])
                pipe.xdel(stream, *ids[start:start + group])
                pending.append(asyncio.create_task(pipe.execute()))
                await asyncio.sleep(0)
            await asyncio.gather(*pending)
            samples.append(time.perf_counter() - t)
        await r.delete(stream, *[f"bench:reply:{i}" for i in range(B)])
        await r.aclose()
        return round(statistics.median(samples[1:]) * 1e6 / B, 2)

    out["write_one_pipeline_us"] = asyncio.run(write(B))
    out["write_groups_of_16_us"] = asyncio.run(write(16))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30, help="repetitions of each 64-request step (median kept)")
    ap.add_argument("--redis-server", default=None, help="redis-server binary (default: found on PATH)")
    ap.add_argument("--out", default="", help="write the JSON result here")
    args = ap.parse_args()
    keys = Keys()
    arena = FrameArena()
    red = EmbeddedRedis(binary=args.redis_server).start()
    try:
        accept = accept_side(args.reps, keys, arena)
        reply = reply_side(args.reps, red.url)
    finally:
        red.stop()
        arena.close()
    result = {
        "what": f"policy worker CPU per request, REAL_G1, batches of {B}, median of {args.reps} (µs per request)",
        "host": {"python": platform.python_version(), "machine": platform.machine(), "node": platform.node(),
                 "processor": platform.processor()},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "accept": accept,
        "reply": reply,
    }
    for side in ("accept", "reply"):
        for k, v in result[side].items():
            print(f"{side:7s} {k:28s} {v:>9}")
    replies_us = reply["split_us"] + reply["encode_us"] + reply["reply_fields_us"] + reply["write_groups_of_16_us"]
    print(f"per batch of {B}: accept {accept['accept_all_us'] * B / 1000:.2f} ms, split + encode + fields + write "
          f"{replies_us * B / 1000:.2f} ms")
    if args.out:
        from benchmarks.harness.record import make_record, write_record

        cmd = " ".join(["python benchmarks/serving_path.py", *sys.argv[1:]])
        print(f"wrote {write_record(make_record('serving-path', cmd, result), args.out)}")


if __name__ == "__main__":
    main()
