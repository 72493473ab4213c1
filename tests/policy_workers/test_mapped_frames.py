"""Shared-memory frames registered with the GPU (here a recording stand-in for CUDA): once per
segment, unregistered when the segment's mapping goes, never for frames that came as bytes."""

from __future__ import annotations

import gc

import numpy as np
from rolloutq.policy_workers.backends._mapped_frames import MappedFrames, mapping_of


def shared_frames(arena, n: int) -> list[np.ndarray]:
    """n requests' frames as the worker sees them: read-only views of real shared-memory segments."""
    from rolloutq.broker.codec import MsgpackNumpyCodec
    from rolloutq.broker.frames import FrameReader

    reader, writer = MsgpackNumpyCodec(frames=FrameReader()), MsgpackNumpyCodec()
    big = (1, 2, 128, 128, 3)  # over the 64 KB threshold: goes through shared memory
    return [reader.decode(writer.encode(arena.externalize(f"r{i}", {"x": np.full(big, i, np.uint8)})))["x"]
            for i in range(n)]


def test_mapped_frames_register_each_segment_once_and_unregister_it_when_it_goes():
    from rolloutq.broker.frames import FrameArena

    calls: list[tuple] = []
    mapped = MappedFrames(lambda ptr, size: calls.append(("register", ptr, size)) or True,
                          lambda ptr: calls.append(("unregister", ptr)))
    arena = FrameArena()
    try:
        views = shared_frames(arena, 3)
        assert all(mapping_of(v) is not None for v in views) and mapping_of(np.zeros(3)) is None
        assert mapped.all_registered(views) and mapped.all_registered(views[:1])
        assert [c[0] for c in calls] == ["register"] * 3 and mapped.registered_total == 3
        assert not mapped.all_registered([views[0], np.zeros((1, 2, 128, 128, 3), np.uint8)])  # bytes: never
    finally:
        arena.close()
    del views
    gc.collect()
    assert [c[0] for c in calls].count("unregister") == 3  # each map unregistered when it was collected
    refused = MappedFrames(lambda ptr, size: False, lambda ptr: calls.append(("unregister", ptr)))
    arena = FrameArena()
    try:
        views = shared_frames(arena, 1)
        assert not refused.all_registered(views) and not refused.all_registered(views)
        assert refused.refused_total == 1  # asked once per segment
    finally:
        arena.close()
