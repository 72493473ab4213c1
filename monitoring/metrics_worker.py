"""What a policy worker (one replica) records: batches, queue waits, replies by status, its GPU.

The consumer calls `on_batch` and `on_reply` (`rolloutq.broker.consumer.ConsumerMetrics`, pass a
WorkerMetrics as the consumer's `metrics`); the refresher thread (`metrics_refresh`) calls `tick`, which keeps
`rolloutq_worker_up` set and samples the GPU through NVML when nvidia-ml-py and a GPU are present.
Build a recorder with `rolloutq.monitoring.metrics.worker_metrics`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from rolloutq.monitoring.metrics_backends import Bound, bind
from rolloutq.monitoring.metrics_defs import (
    GPU_MEM_TOTAL,
    GPU_MEM_USED,
    GPU_UTIL,
    WORKER_BATCH_SIZE,
    WORKER_DECODE,
    WORKER_ENCODE,
    WORKER_INFERENCE,
    WORKER_QUEUE_WAIT,
    WORKER_REQUESTS,
    WORKER_UP,
)
from rolloutq.monitoring.metrics_refresh import register


class WorkerMetrics:
    """What one policy worker (replica) records. Build with `worker_metrics(...)`."""

    def __init__(self, policy: str, worker: str, backend: str = "prometheus"):
        self.policy, self.worker, self.backend = policy, worker, backend
        lab = {"policy": policy, "worker": worker}
        self._batch = bind(backend, WORKER_BATCH_SIZE, **lab)
        self._queue = bind(backend, WORKER_QUEUE_WAIT, **lab)
        self._infer = bind(backend, WORKER_INFERENCE, **lab)
        self._decode = bind(backend, WORKER_DECODE, **lab)
        self._encode = bind(backend, WORKER_ENCODE, **lab)
        self._up = bind(backend, WORKER_UP, **lab)
        self._requests: dict[str, Bound] = {}
        self._gpu: dict[int, tuple[Bound, Bound, Bound]] = {}
        self._nvml: Any = None
        self._closed = False
        self._last_tick = time.monotonic()
        self._gpu_lock = threading.Lock()
        self._up.set(1)
        # Export ok requests at 0 from the start, so rates exist before the first reply.
        self._request_counter("ok")
        register(self)

    def _request_counter(self, status: str) -> Bound:
        c = self._requests.get(status)
        if c is None:
            c = self._requests[status] = bind(
                self.backend, WORKER_REQUESTS, policy=self.policy, worker=self.worker, status=status
            )
        return c

    def observe_batch(
        self,
        size: int,
        queue_s: Sequence[float],
        infer_s: float,
        decode_s: float = 0.0,
        encode_s: float = 0.0,
    ) -> None:
        """One batch went through the backend: its size, each request's queue wait, and the
        batch's inference / decode / encode times (seconds)."""
        self._batch.observe(size)
        obs = self._queue.observe
        for q in queue_s:
            obs(q if q > 0 else 0.0)
        self._infer.observe(infer_s)
        self._decode.observe(decode_s)
        self._encode.observe(encode_s)

    def count_request(self, status: str, n: int = 1) -> None:
        """`n` requests answered with `status` (`"ok"` or a rolloutq.broker.schema.Status error code)."""
        self._request_counter(str(status)).inc(n)

    # rolloutq.broker.consumer.ConsumerMetrics: pass a WorkerMetrics as the consumer's `metrics`.
    def on_batch(self, size: int, queue_s: Sequence[float], infer_s: float, decode_s: float,
                 encode_s: float) -> None:
        self.observe_batch(size, queue_s, infer_s, decode_s, encode_s)

    def on_reply(self, status: str) -> None:
        self.count_request(status)

    def sample_gpu(self, indices: Sequence[int] | None = None) -> None:
        """Read GPU utilisation and memory through NVML (nvidia-ml-py), when it is installed and a
        GPU is present; a no-op otherwise. Call it from the stats loop (every few seconds), not
        per batch. `indices` are NVML device indices (all devices when None)."""
        with self._gpu_lock:
            self._sample_gpu(indices)

    def _sample_gpu(self, indices: Sequence[int] | None) -> None:
        if self._nvml is False:
            return
        if self._nvml is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:  # no nvidia-ml-py, no driver, no GPU: GPU metrics stay absent
                self._nvml = False
                return
        nv = self._nvml
        try:
            devices = list(indices) if indices is not None else list(range(nv.nvmlDeviceGetCount()))
            for i in devices:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                util = nv.nvmlDeviceGetUtilizationRates(h)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                g = self._gpu.get(i)
                if g is None:
                    lab = {"policy": self.policy, "worker": self.worker, "gpu": str(i)}
                    g = self._gpu[i] = (
                        bind(self.backend, GPU_UTIL, **lab),
                        bind(self.backend, GPU_MEM_USED, **lab),
                        bind(self.backend, GPU_MEM_TOTAL, **lab),
                    )
                g[0].set(util.gpu / 100.0)
                g[1].set(float(mem.used))
                g[2].set(float(mem.total))
        except Exception:
            self._nvml = False

    def tick(self, force: bool = False) -> None:
        """Refresh the gauges (up, GPU sample). A background thread does it every REFRESH_S;
        calling it yourself is optional (at most once a second unless forced)."""
        now = time.monotonic()
        if not force and now - self._last_tick < 1.0:
            return
        self._last_tick = now
        self._up.set(0 if self._closed else 1)
        self.sample_gpu()

    def close(self) -> None:
        """The worker stops: `rolloutq_worker_up` goes to 0."""
        self._closed = True
        self._up.set(0)


class NullWorkerMetrics(WorkerMetrics):
    """Metrics off: every method is a no-op."""

    def __init__(self, policy: str = "", worker: str = "", backend: str = "off"):
        self.policy, self.worker, self.backend = policy, worker, "off"

    def observe_batch(self, size, queue_s, infer_s, decode_s=0.0, encode_s=0.0) -> None:  # noqa: D102
        pass

    def count_request(self, status: str, n: int = 1) -> None:
        pass

    def sample_gpu(self, indices: Sequence[int] | None = None) -> None:
        pass

    def tick(self, force: bool = False) -> None:
        pass

    def close(self) -> None:
        pass
