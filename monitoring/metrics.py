"""Metric definitions and the small recorders the hot paths call.

One interface, two implementations behind a flag:

- `backend="prometheus"` (compose, plain processes): prometheus_client metrics in the default
  registry; the process exposes them with `serve_metrics(port)`.
- `backend="ray"` (Ray Serve replicas, Ray actors): `ray.util.metrics`, so the numbers reach the
  Ray metrics agent of the node and Ray's Prometheus endpoint. Ray prefixes every name with
  `ray_`; monitoring/prometheus/prometheus.yml strips that prefix again, so dashboards and rules
  use one name for both.
- `backend="off"`: `NullWorkerMetrics` / `NullSimMetrics`, methods that do nothing.

Every label is bounded: policy, worker (one per replica process), sim (one per simulator
process or actor), status (the reply codes of rolloutq.broker.schema.Status), outcome (the five episode
outcomes of rolloutq.sim_workers.outcomes), gpu (device index). Never a
rollout id, a sequence number or an episode id. Units are base units: seconds, bytes, ratios.

Recorders bind their label values once at construction, so a hot-path call is a few attribute
lookups and a lock per observation (about a microsecond each with prometheus_client).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

BACKENDS = ("prometheus", "ray", "off")

# Buckets. Latencies span a loopback round trip (~0.2 ms) to an overloaded replica (~30 s).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
CODEC_BUCKETS = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


W = ("policy", "worker")
S = ("policy", "sim")

# -- policy workers ---------------------------------------------------------------------------
WORKER_BATCH_SIZE = MetricDef(
    "rolloutq_worker_batch_size", "histogram", "Requests per inference batch.", W, BATCH_BUCKETS
)
WORKER_QUEUE_WAIT = MetricDef(
    "rolloutq_worker_queue_wait_seconds",
    "histogram",
    "Time from XADD by the simulator to the start of inference, per request.",
    W,
    LATENCY_BUCKETS,
)
WORKER_INFERENCE = MetricDef(
    "rolloutq_worker_inference_seconds",
    "histogram",
    "Forward pass time per batch (the replica is busy for this long).",
    W,
    LATENCY_BUCKETS,
)
WORKER_DECODE = MetricDef(
    "rolloutq_worker_decode_seconds", "histogram", "Observation decode time per batch.", W, CODEC_BUCKETS
)
WORKER_ENCODE = MetricDef(
    "rolloutq_worker_encode_seconds", "histogram", "Action chunk encode time per batch.", W, CODEC_BUCKETS
)
WORKER_REQUESTS = MetricDef(
    "rolloutq_worker_requests_total",
    "counter",
    "Requests answered, by reply status (ok or an error code of rolloutq.broker.schema.Status).",
    W + ("status",),
)
WORKER_UP = MetricDef("rolloutq_worker_up", "gauge", "1 while the policy worker runs.", W)
GPU_UTIL = MetricDef(
    "rolloutq_gpu_utilization_ratio", "gauge", "GPU busy fraction (NVML), 0..1.", W + ("gpu",)
)
GPU_MEM_USED = MetricDef("rolloutq_gpu_memory_used_bytes", "gauge", "GPU memory in use (NVML).", W + ("gpu",))
GPU_MEM_TOTAL = MetricDef("rolloutq_gpu_memory_total_bytes", "gauge", "GPU memory size (NVML).", W + ("gpu",))

# -- simulators -------------------------------------------------------------------------------
SIM_ENV_STEPS = MetricDef("rolloutq_sim_env_steps_total", "counter", "Environment steps executed.", S)
SIM_ROUND_TRIP = MetricDef(
    "rolloutq_sim_round_trip_seconds",
    "histogram",
    "Policy query round trip seen by the simulator (send observation .. action chunk decoded).",
    S,
    LATENCY_BUCKETS,
)
SIM_EPISODES = MetricDef("rolloutq_sim_episodes_total", "counter", "Episodes finished (any outcome).", S)
SIM_SUCCESSES = MetricDef("rolloutq_sim_successes_total", "counter", "Episodes finished with success.", S)
SIM_INFRA_FAILURES = MetricDef(
    "rolloutq_sim_infra_failures_total",
    "counter",
    "Episodes not scored: lost to infrastructure (timeout, lost worker, Redis) or a simulator error; re-run.",
    S,
)
SIM_OUTCOMES = MetricDef(
    "rolloutq_sim_episode_outcomes_total",
    "counter",
    "Episodes finished, by outcome (success, failure, policy_error, sim_error, infra).",
    S + ("outcome",),
)
SIM_UP = MetricDef("rolloutq_sim_up", "gauge", "1 while the simulator process runs.", S)

WORKER_METRICS = (
    WORKER_BATCH_SIZE,
    WORKER_QUEUE_WAIT,
    WORKER_INFERENCE,
    WORKER_DECODE,
    WORKER_ENCODE,
    WORKER_REQUESTS,
    WORKER_UP,
    GPU_UTIL,
    GPU_MEM_USED,
    GPU_MEM_TOTAL,
)
SIM_METRICS = (SIM_ENV_STEPS, SIM_ROUND_TRIP, SIM_EPISODES, SIM_SUCCESSES, SIM_INFRA_FAILURES, SIM_OUTCOMES,
               SIM_UP)
EPISODE_OUTCOMES = ("success", "failure", "policy_error", "sim_error", "infra")
"""The values of the `outcome` label (rolloutq.sim_workers.outcomes.OUTCOMES; not imported, so that monitoring
needs no simulator code)."""
UNSCORED_OUTCOMES = ("sim_error", "infra")


# -- backends: a metric bound to its label values has inc / set / observe ----------------------
class _Bound(Protocol):
    def inc(self, v: float = 1.0) -> None: ...
    def set(self, v: float) -> None: ...
    def observe(self, v: float) -> None: ...


_prom_lock = threading.Lock()
_prom_families: dict[str, Any] = {}


def _prom_family(d: MetricDef) -> Any:
    """One prometheus_client family per name per process (recorders of several workers share it)."""
    with _prom_lock:
        fam = _prom_families.get(d.name)
        if fam is None:
            import prometheus_client as pc

            if d.kind == "counter":
                # prometheus_client appends _total itself.
                fam = pc.Counter(d.name.removesuffix("_total"), d.help, d.labels)
            elif d.kind == "gauge":
                fam = pc.Gauge(d.name, d.help, d.labels)
            else:
                fam = pc.Histogram(d.name, d.help, d.labels, buckets=d.buckets)
            _prom_families[d.name] = fam
        return fam


_ray_lock = threading.Lock()
_ray_families: dict[str, Any] = {}


class _RayBound:
    __slots__ = ("_m", "_tags", "_kind")

    def __init__(self, metric: Any, tags: dict[str, str], kind: str):
        self._m, self._tags, self._kind = metric, tags, kind

    def inc(self, v: float = 1.0) -> None:
        if v > 0:  # Ray's Counter rejects 0
            self._m.inc(v, tags=self._tags)

    def set(self, v: float) -> None:
        self._m.set(v, tags=self._tags)

    def observe(self, v: float) -> None:
        self._m.observe(v, tags=self._tags)


def _ray_family(d: MetricDef) -> Any:
    with _ray_lock:
        fam = _ray_families.get(d.name)
        if fam is None:
            from ray.util import metrics as rm

            if d.kind == "counter":
                fam = rm.Counter(d.name, d.help, tag_keys=d.labels)
            elif d.kind == "gauge":
                fam = rm.Gauge(d.name, d.help, tag_keys=d.labels)
            else:
                fam = rm.Histogram(d.name, d.help, boundaries=list(d.buckets), tag_keys=d.labels)
            _ray_families[d.name] = fam
        return fam


def _bind(backend: str, d: MetricDef, **labels: str) -> _Bound:
    values = {k: str(labels[k]) for k in d.labels}
    if backend == "prometheus":
        return _prom_family(d).labels(**values)
    if backend == "ray":
        return _RayBound(_ray_family(d), values, d.kind)
    raise ValueError(f"metrics backend {backend!r} is not one of {BACKENDS}")


# -- gauge refresher -----------------------------------------------------------------------------
# Ray exports a gauge only when it was set since its last report, so a gauge set once vanishes
# from Ray's endpoint (seen with Ray 2.60); GPU gauges need sampling anyway. One daemon thread per
# process re-sets the `up` gauges and samples the GPU of every live recorder every REFRESH_S.
REFRESH_S = 2.0
_live: weakref.WeakSet = weakref.WeakSet()
_refresher: threading.Thread | None = None


def _refresh_loop() -> None:
    while True:
        time.sleep(REFRESH_S)
        for rec in list(_live):
            try:
                rec.tick(force=True)
            except Exception:  # metrics must never take the process down
                pass


def _register(rec: Any) -> None:
    global _refresher
    _live.add(rec)
    with _prom_lock:
        if _refresher is None:
            _refresher = threading.Thread(target=_refresh_loop, name="rolloutq-metrics", daemon=True)
            _refresher.start()


# -- policy workers ---------------------------------------------------------------------------
class WorkerMetrics:
    """What one policy worker (replica) records. Build with `worker_metrics(...)`."""

    def __init__(self, policy: str, worker: str, backend: str = "prometheus"):
        self.policy, self.worker, self.backend = policy, worker, backend
        lab = {"policy": policy, "worker": worker}
        self._batch = _bind(backend, WORKER_BATCH_SIZE, **lab)
        self._queue = _bind(backend, WORKER_QUEUE_WAIT, **lab)
        self._infer = _bind(backend, WORKER_INFERENCE, **lab)
        self._decode = _bind(backend, WORKER_DECODE, **lab)
        self._encode = _bind(backend, WORKER_ENCODE, **lab)
        self._up = _bind(backend, WORKER_UP, **lab)
        self._requests: dict[str, _Bound] = {}
        self._gpu: dict[int, tuple[_Bound, _Bound, _Bound]] = {}
        self._nvml: Any = None
        self._closed = False
        self._last_tick = time.monotonic()
        self._gpu_lock = threading.Lock()
        self._up.set(1)
        # Export ok requests at 0 from the start, so rates exist before the first reply.
        self._request_counter("ok")
        _register(self)

    def _request_counter(self, status: str) -> _Bound:
        c = self._requests.get(status)
        if c is None:
            c = self._requests[status] = _bind(
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
                        _bind(self.backend, GPU_UTIL, **lab),
                        _bind(self.backend, GPU_MEM_USED, **lab),
                        _bind(self.backend, GPU_MEM_TOTAL, **lab),
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


# -- simulators -------------------------------------------------------------------------------
class SimMetrics:
    """What one simulator process or actor records. Build with `sim_metrics(...)`."""

    def __init__(self, sim: str, policy: str = "", backend: str = "prometheus"):
        self.sim, self.policy, self.backend = sim, policy, backend
        self._closed = False
        self._last_tick = time.monotonic()
        self._bind_all()
        _register(self)

    def _bind_all(self) -> None:
        lab = {"policy": self.policy, "sim": self.sim}
        b = self.backend
        self._steps = _bind(b, SIM_ENV_STEPS, **lab)
        self._rtt = _bind(b, SIM_ROUND_TRIP, **lab)
        self._episodes = _bind(b, SIM_EPISODES, **lab)
        self._successes = _bind(b, SIM_SUCCESSES, **lab)
        self._infra = _bind(b, SIM_INFRA_FAILURES, **lab)
        self._outcomes = {o: _bind(b, SIM_OUTCOMES, outcome=o, **lab) for o in EPISODE_OUTCOMES}
        self._up = _bind(b, SIM_UP, **lab)
        self._up.set(1)

    def set_policy(self, policy: str) -> None:
        """Relabel with the policy once it is known (a simulator learns it from the sweep's
        config, after it started). The old label set is dropped (prometheus_client) or marked
        down (Ray, which cannot drop series)."""
        if policy == self.policy:
            return
        old = self.policy
        if self.backend == "prometheus":
            for d in SIM_METRICS:
                for values in ([(old, self.sim, o) for o in EPISODE_OUTCOMES] if "outcome" in d.labels
                               else [(old, self.sim)]):
                    try:
                        _prom_family(d).remove(*values)
                    except KeyError:
                        pass
        else:
            self._up.set(0)
        self.policy = policy
        self._bind_all()

    def observe_round_trip(self, s: float) -> None:
        """One policy query: seconds from sending the observation to having the action chunk."""
        self._rtt.observe(s)

    def env_steps(self, n: int = 1) -> None:
        """`n` environment steps executed (count each env of a vectorised env)."""
        self._steps.inc(n)

    def episode(self, outcome: str) -> None:
        """One episode finished with `outcome` (rolloutq.sim_workers.outcomes). Only `success` counts as a
        success; `sim_error` and `infra` (not scored) also count in `rolloutq_sim_infra_failures_total`."""
        if outcome not in self._outcomes:
            outcome = "infra"  # unknown: never scored
        self._episodes.inc(1)
        self._outcomes[outcome].inc(1)
        if outcome in UNSCORED_OUTCOMES:
            self._infra.inc(1)
        elif outcome == "success":
            self._successes.inc(1)

    # rolloutq.sim_workers.worker.SimMetrics: pass a SimMetrics as the sim worker's `metrics`.
    def on_round_trip(self, seconds: float) -> None:
        self.observe_round_trip(seconds)

    def on_steps(self, n: int) -> None:
        self.env_steps(n)

    def on_episode(self, outcome: str) -> None:
        self.episode(outcome)

    def tick(self, force: bool = False) -> None:
        """Refresh `rolloutq_sim_up`. A background thread does it every REFRESH_S; calling it
        yourself is optional (at most once a second unless forced)."""
        now = time.monotonic()
        if not force and now - self._last_tick < 1.0:
            return
        self._last_tick = now
        self._up.set(0 if self._closed else 1)

    def close(self) -> None:
        self._closed = True
        self._up.set(0)


class NullSimMetrics(SimMetrics):
    """Metrics off: every method is a no-op."""

    def __init__(self, sim: str = "", policy: str = "", backend: str = "off"):
        self.sim, self.policy, self.backend = sim, policy, "off"

    def observe_round_trip(self, s: float) -> None:
        pass

    def env_steps(self, n: int = 1) -> None:
        pass

    def episode(self, outcome: str) -> None:
        pass

    def set_policy(self, policy: str) -> None:
        self.policy = policy

    def tick(self, force: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def worker_metrics(policy: str, worker: str, backend: str = "prometheus") -> WorkerMetrics:
    """The recorder for one policy worker; backend is "prometheus", "ray" or "off"."""
    if backend == "off":
        return NullWorkerMetrics(policy, worker)
    if backend not in BACKENDS:
        raise ValueError(f"metrics backend {backend!r} is not one of {BACKENDS}")
    return WorkerMetrics(policy, worker, backend)


def sim_metrics(sim: str, policy: str = "", backend: str = "prometheus") -> SimMetrics:
    """The recorder for one simulator; backend is "prometheus", "ray" or "off"."""
    if backend == "off":
        return NullSimMetrics(sim, policy)
    if backend not in BACKENDS:
        raise ValueError(f"metrics backend {backend!r} is not one of {BACKENDS}")
    return SimMetrics(sim, policy, backend)


def serve_metrics(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve this process's prometheus_client registry on http://addr:port/metrics (a daemon
    thread). Returns the server (`.shutdown()` stops it). Port 0 picks a free port:
    `server.server_port` tells which."""
    import prometheus_client as pc

    server, _thread = pc.start_http_server(port, addr)
    return server
