"""GPU utilisation and memory, sampled every 50 ms through NVML while a scenario runs.

Without NVML (nvidia-ml-py) or a GPU the sampler records nothing and its windows report None,
so the same scenario runs on a CPU machine.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuSample:
    at: float  # wall clock
    util_pct: int
    mem_used: int  # bytes


class GpuSampler:
    def __init__(self, period_s: float = 0.05) -> None:
        self.samples: list[GpuSample] = []
        self.period_s = period_s
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception:  # no NVML, no GPU: nothing to sample
            self._nvml = None
            return
        threading.Thread(target=self._run, daemon=True, name="gpu-sampler").start()

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                self.samples.append(GpuSample(time.time(), int(util.gpu), int(mem.used)))
            time.sleep(self.period_s)

    def window(self, t0: float, t1: float) -> dict[str, Any]:
        """Mean utilisation and peak memory between two wall-clock times."""
        s = [x for x in self.samples if t0 <= x.at <= t1]
        if not s:
            return {"gpu_util_pct": None, "gpu_mem_used_gib": None}
        return {"gpu_util_pct": round(statistics.fmean(x.util_pct for x in s), 1),
                "gpu_mem_used_gib": round(max(x.mem_used for x in s) / 2**30, 2)}

    def stop(self) -> None:
        self._stop.set()
