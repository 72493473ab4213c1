"""What is measured: every metric's name, kind, help text, labels and buckets.

The recorders (`metrics_worker`, `metrics_sim`) bind these definitions, and the test of the
Prometheus rules and the Grafana dashboard reads them, so a name is spelled in one place. Every label is
bounded: policy, worker (one per replica process), sim (one per simulator process or actor),
status (the reply codes of rolloutq.broker.schema.Status), outcome (the five episode outcomes of
rolloutq.sim_workers.outcomes), gpu (device index). Never a rollout id, a sequence number or an
episode id. Units are base units: seconds, bytes, ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

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
