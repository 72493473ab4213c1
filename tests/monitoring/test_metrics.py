"""The recorders: prometheus_client exposition, the no-op variant, the flag."""

from __future__ import annotations

import urllib.request

import pytest
from rolloutq.monitoring.metrics import serve_metrics, sim_metrics, worker_metrics
from rolloutq.monitoring.metrics_sim import NullSimMetrics
from rolloutq.monitoring.metrics_worker import NullWorkerMetrics


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {n: float(v) for n, _, v in (ln.rpartition(" ") for ln in text.splitlines() if ln[:1] != "#")}


def test_prometheus_backend_exposes_the_recorded_values():
    w = worker_metrics("pm", "w7")
    w.observe_batch(3, [0.01, 0.02, 0.03], infer_s=0.2, decode_s=0.001, encode_s=0.002)
    w.count_request("ok", 3)
    w.count_request("expired")
    w.sample_gpu()  # no GPU here: a no-op
    s = sim_metrics("s7", "pm")
    s.observe_round_trip(0.25)
    s.env_steps(8)
    s.episode("success")
    s.episode("infra")  # an unscored outcome never counts as a success
    s.episode("policy_error")  # scored, a failure of the policy
    server = serve_metrics(0, "127.0.0.1")
    try:
        m = scrape(server.server_port)
    finally:
        server.shutdown()
    w_ = '{policy="pm",worker="w7"}'
    assert m[f"rolloutq_worker_batch_size_sum{w_}"] == 3
    assert m[f"rolloutq_worker_queue_wait_seconds_count{w_}"] == 3
    assert m[f"rolloutq_worker_inference_seconds_sum{w_}"] == pytest.approx(0.2)
    assert m['rolloutq_worker_requests_total{policy="pm",status="ok",worker="w7"}'] == 3
    assert m['rolloutq_worker_requests_total{policy="pm",status="expired",worker="w7"}'] == 1
    assert m[f"rolloutq_worker_up{w_}"] == 1
    s_ = '{policy="pm",sim="s7"}'
    assert m[f"rolloutq_sim_env_steps_total{s_}"] == 8
    assert m[f"rolloutq_sim_episodes_total{s_}"] == 3
    assert m[f"rolloutq_sim_successes_total{s_}"] == 1
    assert m[f"rolloutq_sim_infra_failures_total{s_}"] == 1
    by_outcome = {o: m[f'rolloutq_sim_episode_outcomes_total{{outcome="{o}",policy="pm",sim="s7"}}']
                  for o in ("success", "failure", "policy_error", "sim_error", "infra")}
    assert by_outcome == {"success": 1, "failure": 0, "policy_error": 1, "sim_error": 0, "infra": 1}
    assert m[f"rolloutq_sim_round_trip_seconds_count{s_}"] == 1
    assert not any(k.startswith("rolloutq_gpu_") for k in m)
    w.close()
    s.close()


def test_off_backend_is_a_no_op():
    w = worker_metrics("p", "w", backend="off")
    s = sim_metrics("s", "p", backend="off")
    assert isinstance(w, NullWorkerMetrics) and isinstance(s, NullSimMetrics)
    w.observe_batch(1, [0.1], 0.1)
    w.count_request("ok")
    w.sample_gpu()
    w.close()
    s.observe_round_trip(0.1)
    s.env_steps(3)
    s.episode(True)
    s.close()


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        worker_metrics("p", "w", backend="statsd")
    with pytest.raises(ValueError, match="backend"):
        sim_metrics("s", backend="statsd")


def test_core_protocol_names_record_the_same_things():
    """rolloutq.broker.consumer.ConsumerMetrics and rolloutq.sim_workers.worker.SimMetrics method names."""
    w = worker_metrics("proto", "w1")
    w.on_batch(2, [0.1, 0.2], 0.05, 0.001, 0.001)
    w.on_reply("ok")
    w.on_reply("expired")
    s = sim_metrics("s1", "proto")
    s.on_round_trip(0.3)
    s.on_steps(8)
    s.on_episode("sim_error")
    w.tick(force=True)
    s.tick(force=True)
    server = serve_metrics(0, "127.0.0.1")
    try:
        m = scrape(server.server_port)
    finally:
        server.shutdown()
    assert m['rolloutq_worker_batch_size_sum{policy="proto",worker="w1"}'] == 2
    assert m['rolloutq_worker_requests_total{policy="proto",status="expired",worker="w1"}'] == 1
    assert m['rolloutq_sim_env_steps_total{policy="proto",sim="s1"}'] == 8
    assert m['rolloutq_sim_infra_failures_total{policy="proto",sim="s1"}'] == 1
    assert m['rolloutq_sim_successes_total{policy="proto",sim="s1"}'] == 0
    for null in (worker_metrics("p", "w", "off"), sim_metrics("s", "p", "off")):
        for name in ("on_batch", "on_reply", "on_round_trip", "on_steps", "on_episode"):
            if hasattr(null, name):
                assert callable(getattr(null, name))


def test_sim_learns_its_policy_later():
    s = sim_metrics("late", "")
    s.on_steps(3)
    s.set_policy("pol-late")
    s.on_steps(5)
    sim_metrics("x", backend="off").set_policy("p")
    server = serve_metrics(0, "127.0.0.1")
    try:
        m = scrape(server.server_port)
    finally:
        server.shutdown()
    assert m['rolloutq_sim_env_steps_total{policy="pol-late",sim="late"}'] == 5
    assert m['rolloutq_sim_up{policy="pol-late",sim="late"}'] == 1
    assert not any('policy="",sim="late"' in k for k in m)


def test_gpu_sampling_through_nvml(monkeypatch):
    """With nvidia-ml-py present (here a stand-in module with NVML's call names), the GPU gauges
    carry utilisation as a ratio and memory in bytes, per device index."""
    import sys
    import types

    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=[37, 80][h], memory=0)
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    w = worker_metrics("gpupol", "gw")
    w.sample_gpu()
    server = serve_metrics(0, "127.0.0.1")
    try:
        m = scrape(server.server_port)
    finally:
        server.shutdown()
    assert m['rolloutq_gpu_utilization_ratio{gpu="0",policy="gpupol",worker="gw"}'] == 0.37
    assert m['rolloutq_gpu_utilization_ratio{gpu="1",policy="gpupol",worker="gw"}'] == 0.8
    assert m['rolloutq_gpu_memory_used_bytes{gpu="1",policy="gpupol",worker="gw"}'] == 2 * 2**30
    assert m['rolloutq_gpu_memory_total_bytes{gpu="0",policy="gpupol",worker="gw"}'] == 80 * 2**30
