"""The decision logic over metric series: step load, ramp, burst, idle, Prometheus gap, sims.

The series are open-loop load profiles fed through a tiny plant: replicas follow the decisions at
once, each serves μ = 100 observations/s, the backlog grows by (λ - replicas × μ) × dt when
arrivals outpace the pool, and the metrics are what the exporter would show.
"""

from __future__ import annotations

import math

from rolloutq.controller.autoscale import (
    Autoscaler,
    AutoscaleSettings,
    Metrics,
    PolicyPoolSettings,
    PoolState,
    SimPoolSettings,
)

MU = 100.0
DT = 1.0


def settings(**policy) -> AutoscaleSettings:
    base = dict(min_replicas=1, max_replicas=8, target_utilization=0.8, hysteresis=0.2, up_delay_s=3,
                down_delay_s=10, max_step_up=2, max_step_down=1, backlog_drain_s=10)
    base.update(policy)
    return AutoscaleSettings(policy=PolicyPoolSettings(**base), sims=SimPoolSettings(max_sims=4, envs_per_sim=4))


def simulate(load, s: AutoscaleSettings, t_end: float, replicas: int = 1, gap=lambda t: False):
    """Run the plant; returns [(t, λ, replicas after the decision, decision)]."""
    a = Autoscaler(s)
    backlog = 0.0
    out = []
    t = 0.0
    while t <= t_end:
        lam = load(t)
        served = replicas * MU * DT
        backlog = max(0.0, backlog + lam * DT - served)
        if gap(t):
            m = Metrics(error="URLError: connection refused")
        else:
            m = Metrics(arrival_rate=lam, service_rate=MU, lag=backlog, pending=0.0, replicas_up=replicas, age_s=1.0)
        d = a.decide(m, PoolState(replicas, 0, None), t)
        replicas = d.desired_replicas
        out.append((t, lam, replicas, d))
        t += DT
    return out


def first_time(trace, pred):
    for t, _, n, _ in trace:
        if pred(n):
            return t
    return None


def test_step_load_scales_up_within_bound_without_overshoot_then_down():
    s = settings()
    trace = simulate(lambda t: 300.0 if 10 <= t < 60 else 0.0, s, 140)
    need = math.ceil(300 / (MU * 0.8))  # 4
    t_up = first_time([x for x in trace if x[0] >= 10], lambda n: n >= need)
    assert t_up is not None and t_up - 10 <= 2 * s.policy.up_delay_s + 1, t_up
    assert max(n for _, _, n, _ in trace) == need  # no overshoot
    at_load = [n for t, _, n, _ in trace if 30 <= t < 60]
    assert set(at_load) == {need}
    assert trace[-1][2] == 1  # back to min after the load ends
    # down one step at a time, at least down_delay_s apart
    downs = [t for (t, _, n, _), (_, _, m, _) in zip(trace[1:], trace, strict=False) if n < m]
    assert all(b - a >= s.policy.down_delay_s for a, b in zip(downs, downs[1:], strict=False))
    for _, _, _, d in trace:
        assert d.inputs["metrics"]["arrival_rate"] is not None and d.policy_reason


def test_ramp_only_grows_and_keeps_up():
    s = settings()
    trace = simulate(lambda t: min(600.0, 10.0 * t), s, 90)
    ns = [n for _, _, n, _ in trace]
    assert ns == sorted(ns), "a rising load never scales down"
    assert ns[-1] == math.ceil(600 / (MU * 0.8))
    # ρ at the end of the ramp is under 1 (the pool kept up, with the delay's lag)
    t, lam, n, d = trace[-1]
    assert lam / (n * MU) <= 0.8 + 1e-9


def test_short_burst_is_filtered_by_up_delay():
    s = settings(up_delay_s=5)
    trace = simulate(lambda t: 150.0 if 20 <= t < 22 else 20.0, s, 60)
    assert max(n for _, _, n, _ in trace) == 1
    assert any(d.policy_reason.startswith("wait: up") for _, _, _, d in trace)


def test_backlog_counts_lag_even_when_pending_is_zero():
    s = settings(up_delay_s=0)
    a = Autoscaler(s)
    # Workers ack quickly (pending 0) while 3000 requests wait undelivered: lag must scale up.
    d = a.decide(Metrics(arrival_rate=50, service_rate=MU, lag=3000, pending=0, replicas_up=1, age_s=1),
                 PoolState(1, 0, None), 0.0)
    assert d.desired_replicas == 3 and d.backlog == 3000  # capped at +2 per step
    d = a.decide(Metrics(arrival_rate=50, service_rate=MU, lag=0, pending=0, replicas_up=1, age_s=1),
                 PoolState(1, 0, None), 1.0)
    assert d.desired_replicas == 1


def test_hysteresis_no_flapping_around_the_boundary():
    s = settings(up_delay_s=0, down_delay_s=0)
    # ρ target boundary for 2 replicas: 160/s; oscillate 150..170
    trace = simulate(lambda t: 150.0 if int(t) % 2 else 170.0, s, 60, replicas=3)
    changes = sum(1 for a, b in zip(trace, trace[1:], strict=False) if a[2] != b[2])
    assert changes <= 1, [n for *_, n, _ in trace]


def test_idle_scales_to_zero_and_back():
    s = settings(scale_to_zero_after_s=20)
    trace = simulate(lambda t: 100.0 if t < 10 or t >= 60 else 0.0, s, 70, replicas=2)
    assert first_time([x for x in trace if x[0] >= 10], lambda n: n == 0) <= 10 + 20 + 1
    assert [n for t, _, n, _ in trace if t == 59][0] == 0
    back = [(n, d.policy_reason) for t, _, n, d in trace if t == 60][0]
    assert back[0] >= 1 and back[1].startswith("scale from zero")
    # without scale_to_zero_after_s the floor is min_replicas
    trace = simulate(lambda t: 0.0, settings(), 120, replicas=3)
    assert trace[-1][2] == 1


def test_prometheus_gap_holds_and_says_so():
    s = settings()
    gap = lambda t: 20 <= t < 40  # noqa: E731
    trace = simulate(lambda t: 300.0 if t >= 15 else 0.0, s, 60, gap=gap)
    during = [(n, d) for t, _, n, d in trace if 20 <= t < 40]
    assert all(d.held and d.policy_reason.startswith("hold: prometheus unreachable") for _, d in during)
    assert len({n for n, _ in during}) == 1, "sizes do not move while Prometheus is away"
    # the delay timer restarted after the gap: no scaling at t=40 itself
    assert [n for t, _, n, _ in trace if t == 40][0] == during[0][0] or s.policy.up_delay_s == 0
    assert trace[-1][2] == 4


def test_stale_or_missing_metrics_hold():
    a = Autoscaler(settings(up_delay_s=0))
    st = PoolState(2, 3, 40)
    d = a.decide(Metrics(arrival_rate=900, service_rate=MU, lag=0, pending=0, replicas_up=2, age_s=60), st, 0)
    assert d.held and "stale" in d.policy_reason and (d.desired_replicas, d.desired_sims) == (2, 3)
    d = a.decide(Metrics(arrival_rate=900, service_rate=MU, lag=None, pending=0, replicas_up=2, age_s=1), st, 1)
    assert d.held and "lag" in d.policy_reason and d.desired_replicas == 2
    # no service rate yet while busy: hold rather than guess
    d = a.decide(Metrics(arrival_rate=900, service_rate=None, lag=10, pending=0, replicas_up=2, age_s=1), st, 2)
    assert d.desired_replicas == 2 and "no service rate" in d.policy_reason


def _m(lam, replicas, lag=0.0):
    return Metrics(arrival_rate=lam, service_rate=MU, lag=lag, pending=0, replicas_up=replicas, age_s=1)


def test_sims_grow_with_headroom_bounded_by_episodes_left():
    s = settings(max_replicas=2)
    s.sims = SimPoolSettings(max_sims=10, envs_per_sim=4, up_delay_s=2, max_step_up=1)
    a = Autoscaler(s)
    sims, t = 0, 0.0
    seen = []
    while t < 30:
        d = a.decide(_m(20.0 * sims, 1), PoolState(1, sims, 12), t)  # ρ = 0.2 × sims
        sims = d.desired_sims
        seen.append((t, sims, d.sim_reason))
        t += 1
    assert sims == 3, seen  # 12 episodes / 4 envs: never more than 3 sims
    assert seen[0][1] == 1  # the first sim starts at once
    # a sim that has not started an episode yet holds further growth
    d = Autoscaler(s).decide(_m(20.0, 1), PoolState(1, 2, 40, sims_ready=1), 0)
    assert d.desired_sims == 2 and "still starting" in d.sim_reason


def test_saturated_policy_at_max_stops_sim_growth_and_removes():
    s = settings(max_replicas=2)
    s.sims = SimPoolSettings(max_sims=10, envs_per_sim=4, down_delay_s=2)
    a = Autoscaler(s)
    # at max, ρ 0.9, a little lag: hold (not grow)
    d = a.decide(_m(180, 2, lag=3), PoolState(2, 5, 100), 0)
    assert d.desired_sims == 5 and d.sim_reason.startswith("hold: policy pool saturated")
    # at max with more than a sim's worth of requests waiting: remove after the down delay
    d1 = a.decide(_m(200, 2, lag=50), PoolState(2, 5, 100), 1)
    d2 = a.decide(_m(200, 2, lag=50), PoolState(2, 5, 100), 3)
    assert d1.desired_sims == 5 and d2.desired_sims == 4 and d2.sim_reason.startswith("saturated")
    # below max and busy: the policy pool grows first, sims hold
    d = a.decide(_m(180, 1), PoolState(1, 5, 100), 4)
    assert d.desired_sims == 5 and d.policy_reason.startswith(("up:", "wait: up:"))


def test_sims_removed_as_sweep_drains():
    a = Autoscaler(settings())
    d = a.decide(_m(10, 1), PoolState(1, 4, 5), 0)
    assert d.desired_sims == 2 and d.sim_reason.startswith("drain")
    d = a.decide(_m(0, 1), PoolState(1, 2, 0), 1)
    assert d.desired_sims == 0
    # even without metrics a drained sweep lets its sims go
    d = a.decide(Metrics(error="down"), PoolState(1, 2, 0), 2)
    assert d.desired_sims == 0 and d.desired_replicas == 1 and d.held


def test_idle_pool_without_service_rate_still_shrinks_to_min():
    a = Autoscaler(settings(down_delay_s=5))
    idle = Metrics(arrival_rate=0, service_rate=None, lag=0, pending=0, replicas_up=3, age_s=1)
    assert a.decide(idle, PoolState(3, 0, None), 0).desired_replicas == 3
    d = a.decide(idle, PoolState(3, 0, None), 5)
    assert d.desired_replicas == 2 and d.policy_reason.startswith("down: idle")
