"""The autoscaling rule for both pools, as pure functions of metrics and time (no I/O).

Policy pool: the arrival rate λ (observations/s), the per-replica batched service rate μ
(observations per busy second at the current batch size) and the backlog (consumer-group lag +
pending; lag is what no worker holds yet, pending what workers hold unanswered; pending alone
hides a backlog when workers ack quickly) give the replicas needed to keep
ρ = λ / (replicas × μ) under `target_utilization` while the backlog drains within
`backlog_drain_s`. Scaling up waits `up_delay_s` of agreeing decisions, down `down_delay_s`;
scaling down also needs ρ at the smaller size to stay under the target by `hysteresis`, so the
pool does not flap around a boundary. Steps are capped. With `scale_to_zero_after_s` set, an idle
pool (no arrivals, no backlog) goes to zero replicas and comes back at the first arrival.

Sim pool: simulators are added while rollouts remain and the policy pool has headroom (ρ under
the target), held while the policy pool is still growing toward its maximum, held or removed
when it is saturated at its maximum (more sims only lengthen queues), never more than the
episodes left need, and removed as the sweep drains.

Missing or stale metrics never move either pool: the decision holds the current sizes and says
why. Every decision returns a `Decision` that records its inputs and reasons.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PolicyPoolSettings:
    min_replicas: int = 1
    max_replicas: int = 4
    target_utilization: float = 0.8
    """Keep ρ = λ / (replicas × μ) under this."""
    hysteresis: float = 0.1
    """Scale down only when ρ at the smaller size stays under target × (1 - hysteresis)."""
    backlog_drain_s: float = 10.0
    """Size the pool so that the backlog (lag + pending) would drain within this long at ρ = 1."""
    backlog_per_replica_ok: float = 0.0
    """Backlog each replica may hold without it counting (0: twice the batch it is working on is
    normal; set e.g. to max_inflight to ignore what workers hold in hand)."""
    up_delay_s: float = 5.0
    down_delay_s: float = 30.0
    max_step_up: int = 2
    max_step_down: int = 1
    scale_to_zero_after_s: float = 0.0
    """0: never go below `min_replicas`; else go to zero after this long with no arrivals and no backlog."""


@dataclass
class SimPoolSettings:
    min_sims: int = 0
    max_sims: int = 8
    envs_per_sim: int = 4
    up_delay_s: float = 5.0
    down_delay_s: float = 15.0
    max_step_up: int = 1
    max_step_down: int = 1
    remove_when_saturated: bool = True
    """At max replicas and ρ over target, remove a sim when one sim's worth of requests waits
    undelivered anyway (lag ≥ `saturated_lag_sims` × envs_per_sim): with the pool saturated,
    that sim adds queueing, not throughput. Below that, hold (the sims keep the pool busy)."""
    saturated_lag_sims: float = 1.0


@dataclass
class AutoscaleSettings:
    """Everything `rolloutq eval --autoscale` and `rolloutq controller` need (one object)."""

    enabled: bool = False
    interval_s: float = 2.0
    prometheus_url: str | None = None
    """None (eval only): start a local exporter + Prometheus (rolloutq.controller.localstack)."""
    exporter_root: str | None = None
    """Checkout holding monitoring/exporter.py, for the local exporter (default: this one)."""
    prometheus_timeout_s: float = 2.0
    stale_after_s: float = 15.0
    """Metrics older than this (exporter's last poll) count as missing: hold."""
    window: str = "20s"
    """PromQL range for the arrival rate."""
    capacity_window: str = "2m"
    """PromQL range over which the best per-replica service rate counts as the batched capacity μ."""
    metrics_port: int = 0
    """Port of the controller's own /metrics (0: pick a free one; -1: none)."""
    metrics_addr: str = "127.0.0.1"
    policy: PolicyPoolSettings = field(default_factory=PolicyPoolSettings)
    sims: SimPoolSettings = field(default_factory=SimPoolSettings)


@dataclass
class Metrics:
    """What the controller reads from Prometheus for one policy; None means absent."""

    arrival_rate: float | None = None
    service_rate: float | None = None
    lag: float | None = None
    pending: float | None = None
    replicas_up: float | None = None
    age_s: float | None = None
    """Seconds since the exporter's last successful poll (staleness)."""
    error: str | None = None
    """Set when Prometheus could not be read at all."""

    def missing(self, stale_after_s: float) -> str | None:
        """Why these metrics cannot be acted on, or None."""
        if self.error:
            return f"prometheus unreachable: {self.error}"
        absent = [n for n in ("arrival_rate", "lag", "pending", "age_s") if getattr(self, n) is None]
        if absent:
            return "metrics missing: " + ", ".join(absent)
        if self.age_s is not None and self.age_s > stale_after_s:
            return f"metrics stale: last exporter poll {self.age_s:.0f}s ago (> {stale_after_s:.0f}s)"
        return None


@dataclass
class PoolState:
    """The pools as they are now, from the actuators (not from Prometheus)."""

    replicas: int
    sims: int
    episodes_left: int | None = None
    """Episodes not finished (to do + running); None when no sweep is followed."""
    running_replicas: int | None = None
    """Replicas serving now; fewer than `replicas` while a scale-up is still starting them."""
    sims_ready: int | None = None
    """Sims that have started an episode; fewer than `sims` while new ones are still starting."""


@dataclass
class Decision:
    t: float
    desired_replicas: int
    desired_sims: int
    replicas: int
    sims: int
    policy_reason: str
    sim_reason: str
    held: bool = False
    utilization: float | None = None
    needed_replicas: float | None = None
    backlog: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reason_kind(self) -> str:
        """A short label for the reason counter (first word(s) before the colon)."""
        return self.policy_reason.split(":", 1)[0]

    @property
    def sim_reason_kind(self) -> str:
        return self.sim_reason.split(":", 1)[0]


@dataclass
class _Pending:
    """A change waiting for its delay: the direction and since when it was asked for."""

    direction: int = 0
    since: float = 0.0


class Autoscaler:
    """Stateful (delays, idle timer) but pure: feed it metrics and a clock, get decisions."""

    def __init__(self, settings: AutoscaleSettings) -> None:
        self.s = settings
        self._policy_wait = _Pending()
        self._sim_wait = _Pending()
        self._idle_since: float | None = None
        self.last_service_rate: float | None = None

    # -- policy pool ---------------------------------------------------------------------------
    def _policy(self, m: Metrics, state: PoolState, now: float) -> tuple[int, str, dict[str, Any]]:
        p = self.s.policy
        cur = state.replicas
        converging = state.running_replicas is not None and state.running_replicas < cur
        lam = float(m.arrival_rate or 0.0)
        backlog = float(m.lag or 0.0) + float(m.pending or 0.0)
        mu = m.service_rate if m.service_rate and m.service_rate > 0 else None
        if mu is not None:
            self.last_service_rate = mu
        info: dict[str, Any] = {"backlog": backlog}
        busy = lam > 0 or backlog > 0

        # Idle: scale to zero after the idle period, if configured.
        if not busy:
            self._idle_since = self._idle_since if self._idle_since is not None else now
            idle_for = now - self._idle_since
            if p.scale_to_zero_after_s > 0 and idle_for >= p.scale_to_zero_after_s:
                self._policy_wait = _Pending()
                return 0, f"idle: no arrivals and no backlog for {idle_for:.0f}s, scale to zero", info
        else:
            self._idle_since = None

        if cur == 0:
            if busy:
                n = max(1, p.min_replicas)
                if mu is None and self.last_service_rate:
                    mu = self.last_service_rate
                if mu:
                    n = max(n, math.ceil(self._need(lam, backlog, mu, 0) - 1e-9))
                n = min(n, p.max_replicas, max(1, p.max_step_up))
                self._policy_wait = _Pending()
                return n, f"scale from zero: λ={lam:.1f}/s backlog={backlog:.0f}", info
            floor = 0 if p.scale_to_zero_after_s > 0 else p.min_replicas
            return floor, ("idle at zero" if floor == 0 else "below min: start min replicas"), info

        if mu is None:
            if not busy:
                floor = max(p.min_replicas, 1)
                if cur > floor:  # idle: no rate needed to know the pool can shrink to its floor
                    n, why = self._delayed("policy", cur, max(floor, cur - p.max_step_down), -1, p.down_delay_s,
                                           now, f"down: idle (no arrivals, no backlog), {cur} > min {floor}")
                    return n, why, info
                self._policy_wait = _Pending()
                return self._clamp(cur, cur), "idle: no arrivals, no service rate yet", info
            return cur, "hold: no service rate yet (no replica has served)", info

        need = self._need(lam, backlog, mu, cur)
        rho = lam / (cur * mu)
        info.update(utilization=rho, needed_replicas=need)
        want = math.ceil(need - 1e-9)
        if want > cur:
            target = min(want, cur + p.max_step_up)
            target = self._clamp(target, cur)
            if target <= cur:
                self._policy_wait = _Pending()
                return cur, f"at max: ρ={rho:.2f} needs {need:.2f} replicas, max {p.max_replicas}", info
            n, why = self._delayed("policy", cur, target, +1, p.up_delay_s, now,
                                   f"up: ρ={rho:.2f} λ={lam:.1f}/s μ={mu:.1f}/s backlog={backlog:.0f} "
                                   f"needs {need:.2f} replicas")
            return n, why, info
        # Down only with room: ρ at the smaller size under target × (1 - hysteresis).
        low = p.target_utilization * (1 - p.hysteresis)
        down_need = self._need(lam, backlog, mu, cur, target=low)
        down_to = max(math.ceil(down_need - 1e-9), p.min_replicas, 1)
        if down_to < cur and converging:
            self._policy_wait = _Pending()
            return cur, f"hold: replicas still starting ({state.running_replicas}/{cur}), no scale-down yet", info
        if down_to < cur:
            target = max(down_to, cur - p.max_step_down)
            n, why = self._delayed("policy", cur, target, -1, p.down_delay_s, now,
                                   f"down: ρ={rho:.2f} λ={lam:.1f}/s μ={mu:.1f}/s backlog={backlog:.0f} "
                                   f"fits {target} replicas under ρ {low:.2f}")
            return n, why, info
        self._policy_wait = _Pending()
        if cur < p.min_replicas or cur > p.max_replicas:
            return self._clamp(cur, cur), "bounds: back within min/max", info
        return cur, f"steady: ρ={rho:.2f} needs {need:.2f} replicas", info

    def _need(self, lam: float, backlog: float, mu: float, cur: int, target: float | None = None) -> float:
        """Replicas that keep ρ under `target`, and that drain the backlog within `backlog_drain_s`.

        The drain may use the headroom the target keeps (ρ up to 1 while draining): sizing it at the
        target too would leave one replica too many once the backlog a delay let build is gone."""
        p = self.s.policy
        target = target or p.target_utilization
        allowance = p.backlog_per_replica_ok * max(cur, 1)
        extra = max(0.0, backlog - allowance) / max(p.backlog_drain_s, 1e-3)
        return max(lam / (mu * target), (lam + extra) / mu)

    def _clamp(self, n: int, cur: int) -> int:
        p = self.s.policy
        return max(p.min_replicas, min(p.max_replicas, n))

    def _delayed(self, which: str, cur: int, target: int, direction: int, delay: float, now: float,
                 reason: str) -> tuple[int, str]:
        wait = self._policy_wait if which == "policy" else self._sim_wait
        if wait.direction != direction:
            wait.direction, wait.since = direction, now
        waited = now - wait.since
        if waited + 1e-9 >= delay:
            wait.direction, wait.since = direction, now  # the next step waits its own delay
            return target, reason
        return cur, f"wait: {reason} (for {waited:.0f}/{delay:.0f}s)"

    # -- sim pool ------------------------------------------------------------------------------
    def _sims(self, m: Metrics, state: PoolState, desired_replicas: int, rho: float | None,
              now: float) -> tuple[int, str]:
        sp, p = self.s.sims, self.s.policy
        cur = state.sims
        left = state.episodes_left
        if left is None:
            self._sim_wait = _Pending()
            return cur, "no sweep: sims unmanaged"
        cap = min(sp.max_sims, math.ceil(left / max(1, sp.envs_per_sim)))
        if left == 0:
            self._sim_wait = _Pending()
            return 0, "drained: no episodes left"
        if cur > cap:
            self._sim_wait = _Pending()
            return max(cap, min(sp.min_sims, cap)), f"drain: {left} episodes left need {cap} sims"
        saturated_at_max = state.replicas >= p.max_replicas and rho is not None and rho >= p.target_utilization
        if saturated_at_max:
            lag = float(m.lag or 0.0)
            if (sp.remove_when_saturated and lag >= sp.saturated_lag_sims * sp.envs_per_sim
                    and cur > max(sp.min_sims, 1)):
                target = max(cur - sp.max_step_down, sp.min_sims, 1)
                return self._delayed("sim", cur, target, -1, sp.down_delay_s, now,
                                     f"saturated: policy pool at max {p.max_replicas} with ρ={rho:.2f} and "
                                     f"{lag:.0f} requests waiting, remove sims")
            self._sim_wait = _Pending()
            return cur, f"hold: policy pool saturated at max {p.max_replicas} (ρ={rho:.2f})"
        if rho is not None and rho >= p.target_utilization:
            self._sim_wait = _Pending()
            return cur, f"hold: policy pool busy (ρ={rho:.2f}), growing toward {desired_replicas} replicas"
        if desired_replicas > state.replicas:
            self._sim_wait = _Pending()
            return cur, f"hold: policy pool scaling up {state.replicas} -> {desired_replicas}"
        if cur < max(sp.min_sims, 0) and cur < cap:
            return min(sp.min_sims, cap), "below min sims"
        if cur < cap and state.sims_ready is not None and state.sims_ready < cur:
            self._sim_wait = _Pending()
            return cur, f"hold: sims still starting ({state.sims_ready}/{cur} running episodes)"
        if cur < cap:
            target = min(cap, cur + sp.max_step_up)
            why = "headroom: " + (f"ρ={rho:.2f} < {p.target_utilization:.2f}" if rho is not None else "policy idle")
            return self._delayed("sim", cur, target, +1, sp.up_delay_s if cur > 0 else 0.0, now,
                                 f"{why}, {left} episodes left")
        self._sim_wait = _Pending()
        return cur, f"steady: {cur} sims cover {left} episodes left (max {sp.max_sims})"

    # -- both ------------------------------------------------------------------------------------
    def decide(self, m: Metrics, state: PoolState, now: float) -> Decision:
        inputs = {"metrics": asdict(m), "state": asdict(state)}
        why_not = m.missing(self.s.stale_after_s)
        if why_not is not None:
            self._policy_wait = _Pending()
            self._sim_wait = _Pending()
            # A drained sweep still lets sims go: that needs no metrics.
            sims = 0 if state.episodes_left == 0 else state.sims
            return Decision(now, state.replicas, sims, state.replicas, state.sims,
                            f"hold: {why_not}", "drained: no episodes left" if sims != state.sims
                            else f"hold: {why_not}", held=True, inputs=inputs)
        desired, reason, info = self._policy(m, state, now)
        rho = info.get("utilization")
        busy = bool(m.arrival_rate or 0) or bool(info.get("backlog"))
        if rho is None and state.replicas > 0 and not busy:
            rho = 0.0
        if rho is None and busy and state.episodes_left:
            self._sim_wait = _Pending()
            sims, sim_reason = state.sims, "hold: policy pool busy, no service rate yet"
            if state.episodes_left is not None:
                cap = min(self.s.sims.max_sims, math.ceil(state.episodes_left / max(1, self.s.sims.envs_per_sim)))
                if state.sims > cap:
                    sims, sim_reason = cap, f"drain: {state.episodes_left} episodes left need {cap} sims"
        else:
            sims, sim_reason = self._sims(m, state, desired, rho, now)
        return Decision(now, desired, sims, state.replicas, state.sims, reason, sim_reason,
                        utilization=rho, needed_replicas=info.get("needed_replicas"),
                        backlog=info.get("backlog"), inputs=inputs)
