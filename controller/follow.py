"""Following a sweep to its end: the controller's half of an evaluation once the episodes are queued.

Results arrive on the sweep's stream; each episode's last one stands, while one lost to
infrastructure (a dead simulator, a timeout) or to a simulator error is queued again until
`max_attempts`. Once a second the follower hands back episodes whose lease expired, reads the
policy workers' stats for the progress line, and notices when every simulator actor has exited.
A Redis restart is waited out: results written before it went down are read again once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rolloutq.broker.connection import REDIS_DOWN
from rolloutq.broker.keys import Keys
from rolloutq.broker.sweep import SweepQueue
from rolloutq.controller.errors import EvalFailed
from rolloutq.controller.intake import ResultIntake
from rolloutq.controller.results import count_outcomes, percentile
from rolloutq.sim_workers.outcomes import INFRA, POLICY_ERROR, RERUN, SCORED, SIM_ERROR, SUCCESS, outcome_of

if TYPE_CHECKING:
    from rolloutq.controller.eval import EvalSettings

log = logging.getLogger("rolloutq.eval")

HOUSEKEEPING_S = 1.0
"""How often lease expiry, worker stats and the simulator actors are checked."""


class _Live:
    """What the progress line shows. Its rates are the summary's: steps (and policy calls) over the
    time since the first episode started, so the last line and the summary agree."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.records: dict[int, dict[str, Any]] = {}
        self.first_activity: float | None = None  # unix time the first steps or calls were seen
        self.served = 0

    def note_served(self, served_total: int) -> None:
        """Policy calls served so far (all workers)."""
        self.served = served_total

    def line(self, live_steps: int) -> str:
        records = list(self.records.values())
        outcomes, _ = count_outcomes(records)
        scored = sum(outcomes[o] for o in SCORED)
        steps = max(live_steps, sum(r["steps"] for r in records))  # no live count without Ray actors
        calls = max(self.served, sum(r["policy_calls"] for r in records))
        now = time.time()
        if self.first_activity is None and (steps or calls):
            self.first_activity = now
        t0 = min([r["started_at"] for r in records] + [self.first_activity or now])
        span = max(1e-6, now - t0)
        rts = [x for r in records for x in r["round_trip_ms"][-50:]]
        p50 = percentile(rts, 50)
        rate = f"{outcomes[SUCCESS] / scored:.0%} of {scored} scored" if scored else "-"
        errors = ", ".join(f"{o} {outcomes[o]}" for o in (POLICY_ERROR, SIM_ERROR, INFRA) if outcomes[o])
        return (f"success {rate}{f' ({errors})' if errors else ''} | {steps / span:.1f} env steps/s | "
                f"{calls / span:.1f} policy calls/s | rt p50 {p50 if p50 is not None else '-'} ms")


async def worker_stats(r: Any, keys: Keys, policy: str) -> dict[str, Any]:
    """Totals over the workers that wrote their stats recently; records of dead workers are
    deleted where this user may (rolloutq.monitoring.worker_records)."""
    from rolloutq.monitoring.worker_records import read_records_async

    records = await read_records_async(r, keys.worker_stats(policy), prune=True)
    snaps = [w.stats for w in (*records.fresh, *records.stale)]  # a worker that died still served
    served = sum(s.get("served_total", 0) for s in snaps)
    batches = sum(s.get("batches_total", 0) for s in snaps)
    return {"replicas_reporting": len(records.fresh), "replicas_stale": len(records.stale),
            "served_total": served, "batches_total": batches,
            "mean_batch_size": round(served / batches, 3) if batches else 0.0,
            "busy_s_total": round(sum(s.get("busy_s_total", 0.0) for s in snaps), 3),
            "errors_total": _merge([s.get("errors_total", {}) for s in snaps])}


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


class SweepFollower:
    """Reads one sweep's results until every episode has its last one, re-running those lost."""

    def __init__(self, s: EvalSettings, console: Console, r: Any, keys: Keys, queue: SweepQueue, actors: list,
                 runs: dict, ray: Any, tick: Any, intake: ResultIntake) -> None:
        self.s, self.console, self.r, self.keys, self.queue = s, console, r, keys, queue
        self.actors, self.runs, self.ray, self.tick, self.intake = actors, runs, ray, tick, intake
        self.live = _Live(s.episodes)
        self.final: dict[int, dict[str, Any]] = {}
        self.videos: dict[int, bytes] = {}
        self.last_id = b"0-0"
        self.last_housekeeping = 0.0
        self.last_tick = 0.0
        self.live_steps = 0
        self.deadline = time.perf_counter() + s.timeout_s if s.timeout_s else None
        self.down_since: float | None = None
        self.backoff = 0.2

    async def run(self) -> tuple[list[dict[str, Any]], dict[int, bytes]]:
        progress = Progress(TextColumn("[bold]episodes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.description}"), console=self.console, disable=not self.s.progress,
                            transient=False)
        with progress:
            bar = progress.add_task("starting simulators...", total=self.s.episodes)
            while len(self.final) < self.s.episodes:
                try:
                    await self._read_results()
                    await self._housekeeping()
                    await self._autoscale()
                except REDIS_DOWN as e:
                    await self._wait_for_redis(e)
                    continue
                self._redis_is_back()
                progress.update(bar, completed=len(self.final), description=self.live.line(self.live_steps))
                if self._past_deadline():
                    raise EvalFailed(f"run did not finish within --timeout-s {self.s.timeout_s:.0f}s: "
                                     f"{self._done()}")
        return list(self.final.values()), self.videos

    async def _read_results(self) -> None:
        for entry in await self.queue.read_results(self.last_id, block_ms=500):
            self.last_id = entry.entry_id
            record = self.intake.accept(entry)
            if record is not None:
                await self._take(record, entry.video)

    async def _take(self, record: dict[str, Any], video: bytes | None) -> None:
        """Keep an episode's result as its last one, or queue the episode again."""
        ep = record["episode"]
        if ep in self.final:
            return  # a duplicate from a simulator whose lease had expired
        outcome = outcome_of(record)
        if outcome in RERUN and record["attempt"] < self.s.max_attempts:
            log.warning("episode %d attempt %d ended %s (%s: %s); re-running", ep, record["attempt"],
                        outcome, record.get("reason"), record.get("error"))
            await self.queue.requeue(self.intake.spec(ep, record["seed"], record["attempt"] + 1))
            return
        if outcome in RERUN:
            self.console.print(f"[red]episode {ep} ended {outcome} ({escape(str(record.get('reason')))}) "
                               f"after {record['attempt']} attempts, not scored: "
                               f"{escape(str(record.get('error')))}[/red]", highlight=False)
        self.final[ep] = record
        self.live.records[ep] = record
        if video:
            self.videos[ep] = video

    async def _housekeeping(self) -> None:
        """Expired leases, the live step count, policy calls per second, and the simulator actors."""
        now = time.perf_counter()
        if now - self.last_housekeeping <= HOUSEKEEPING_S:
            return
        self.last_housekeeping = now
        back = await self.queue.expire_leases(self.intake.hand_back)
        if back:
            self.console.print(f"[yellow]{back} episode(s) handed back from simulators that stopped "
                               "answering; re-running them[/yellow]")
        if self.ray is not None:
            self.live_steps = await _live_steps(self.actors, self.ray, self.live_steps)
        stats = await worker_stats(self.r, self.keys, self.s.policy)
        self.live.note_served(stats["served_total"])
        if self.ray is not None:
            _check_sims(self.runs, self.ray, len(self.final), self.s.episodes)

    async def _autoscale(self) -> None:
        if self.tick is not None and time.perf_counter() - self.last_tick >= self.s.autoscale.interval_s:
            self.last_tick = time.perf_counter()
            await self.tick()

    async def _wait_for_redis(self, e: BaseException) -> None:
        """Redis restarting: simulators and workers ride it out too; results written before it went
        down are read again from `last_id` once it is back (AOF keeps them)."""
        if self.down_since is None:
            self.down_since = time.perf_counter()
            self.console.print(f"[yellow]Redis unreachable ({type(e).__name__}); waiting for it to come "
                               "back...[/yellow]")
        if self._past_deadline():
            raise EvalFailed(f"Redis unreachable at --timeout-s {self.s.timeout_s:.0f}s: {self._done()}") from None
        await asyncio.sleep(self.backoff)
        self.backoff = min(self.backoff * 2, 2.0)

    def _redis_is_back(self) -> None:
        if self.down_since is not None:
            self.console.print(f"[green]Redis is back after {time.perf_counter() - self.down_since:.1f}s[/green]")
            self.down_since, self.backoff = None, 0.2

    def _past_deadline(self) -> bool:
        return bool(self.deadline and time.perf_counter() > self.deadline)

    def _done(self) -> str:
        return f"{len(self.final)}/{self.s.episodes} episodes done"


async def follow_sweep(s: EvalSettings, console: Console, r: Any, keys: Keys, queue: SweepQueue, actors: list,
                       runs: dict, ray: Any, tick: Any = None, *,
                       intake: ResultIntake) -> tuple[list[dict[str, Any]], dict[int, bytes]]:
    """Follow the sweep's results until every episode has its last one. Only results `intake` takes
    are seen here: a result that is malformed, forged, late or a duplicate is counted and dropped.
    `tick` (the autoscaler's) runs every `s.autoscale.interval_s`."""
    return await SweepFollower(s, console, r, keys, queue, actors, runs, ray, tick, intake).run()


async def _live_steps(actors: list, ray: Any, previous: int) -> int:
    try:
        refs = [a.progress.remote() for a in actors]
        got = await asyncio.wait_for(asyncio.gather(*[asyncio.wrap_future(ref.future()) for ref in refs]), 2.0)
        return sum(g["steps"] for g in got)
    except Exception:
        return previous


def _check_sims(runs: dict, ray: Any, done: int, total: int) -> None:
    if not runs:  # an autoscaled pool may be empty for a moment
        return
    ready, _ = ray.wait(list(runs.values()), timeout=0, num_returns=len(runs))
    if len(ready) < len(runs) or done >= total:
        return
    errors = []
    for ref in ready:
        try:
            ray.get(ref)
        except Exception as e:
            errors.append(str(e).splitlines()[0][:300])
    raise EvalFailed("every simulator actor exited before the sweep finished"
                     + (f": {errors[0]}" if errors else "") + " (run with --verbose to see their logs)")
