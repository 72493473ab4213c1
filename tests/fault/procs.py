"""Entry points the fault tests start as real processes: `python -m tests.fault.procs ROLE JSON`.

`worker` runs the same `PolicyWorker` that `rolloutq policy-worker` runs (SIGTERM/SIGINT set its
stop event), with a test backend from `tests.fault.backends` passed as an instance, and with the
re-claim cadence a test needs (the CLI keeps production defaults). `sim` runs the same `SimWorker`
as `rolloutq sim-worker`, with short client timeouts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Any


def _until_signal(main: Any) -> Any:
    async def runner() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)  # debugging a hung test process
        return await main(stop)

    return asyncio.run(runner())


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        print(f"TASK {task.get_name()}")
        coro = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                print(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    sys.stdout.flush()


def worker(cfg: dict[str, Any]) -> None:
    from rolloutq.broker.settings import BatchSettings, RedisSettings, WorkerSettings
    from rolloutq.policy_workers.loop import PolicyWorker, PolicyWorkerSettings

    from tests.fault.backends import FaultBackend

    settings = PolicyWorkerSettings(
        backend="fault",
        redis=RedisSettings(url=cfg["redis_url"], namespace=cfg.get("namespace", "rq")),
        worker=WorkerSettings(
            policy=cfg.get("policy", "p"), worker_id=cfg.get("worker_id", ""),
            claim_idle_ms=cfg.get("claim_idle_ms", 500), claim_every_s=cfg.get("claim_every_s", 0.2),
            max_deliveries=cfg.get("max_deliveries", 3), stats_every_s=0.2,
            forget_after_s=cfg.get("forget_after_s", 120.0),
            batch=BatchSettings(max_batch_size=cfg.get("max_batch_size", 8), max_wait_ms=cfg.get("max_wait_ms", 2),
                                max_inflight=cfg.get("max_inflight", 0))),
    )
    worker = PolicyWorker(settings, backend=FaultBackend(**cfg.get("backend", {})))
    _until_signal(worker.run)
    print("WORKER-EXIT " + json.dumps(worker.stats()), flush=True)


def sim(cfg: dict[str, Any]) -> None:
    from rolloutq.broker.settings import ClientSettings, RedisSettings
    from rolloutq.sim_workers.worker import SimWorker, SimWorkerSettings

    settings = SimWorkerSettings(
        run=cfg["run"], envs=cfg.get("envs", 2), sim_id=cfg.get("sim_id", ""), exit_when_drained=True,
        redis=RedisSettings(url=cfg["redis_url"]),
        client=ClientSettings(reply_timeout_s=cfg.get("reply_timeout_s", 3.0), deadline_s=cfg.get("deadline_s", 60),
                              max_resends=cfg.get("max_resends", 20), backoff_s=0.05),
    )
    summary = _until_signal(SimWorker(settings).run)
    print("SIM-EXIT " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    {"worker": worker, "sim": sim}[sys.argv[1]](json.loads(sys.argv[2]))
