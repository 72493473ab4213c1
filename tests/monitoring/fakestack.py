"""A stand-in policy worker and simulator speaking the wire protocol, instrumented with
rolloutq.monitoring.metrics exactly where the core calls it (so the tests drive every metric for real).

Not the core's consumer or runner: just enough of the protocol for queue metrics to move.
"""

from __future__ import annotations

import json
import random
import threading
import time

from rolloutq.broker.keys import GROUP, Keys
from rolloutq.broker.schema import Reply, Request
from rolloutq.monitoring.metrics_sim import SimMetrics
from rolloutq.monitoring.metrics_worker import WorkerMetrics


def ensure_group(r, keys: Keys, policy: str) -> None:
    try:
        r.xgroup_create(keys.requests(policy), GROUP, id="$", mkstream=True)
    except Exception as e:  # BUSYGROUP: already there
        if "BUSYGROUP" not in str(e):
            raise


class FakeWorker(threading.Thread):
    def __init__(self, r, keys: Keys, policy: str, wid: str, metrics: WorkerMetrics,
                 infer_s: float = 0.004, max_batch: int = 8, stats_every_s: float = 0.3):
        super().__init__(daemon=True)
        self.r, self.keys, self.policy, self.wid, self.m = r, keys, policy, wid, metrics
        self.infer_s, self.max_batch, self.stats_every_s = infer_s, max_batch, stats_every_s
        self.stop_ev = threading.Event()
        self.served = self.batches = 0
        self.busy = 0.0

    def write_stats(self) -> None:
        self.r.hset(self.keys.worker_stats(self.policy), self.wid, json.dumps({
            "served_total": self.served, "batches_total": self.batches,
            "busy_s_total": self.busy, "errors_total": 0, "ts": time.time()}))

    def run(self) -> None:
        stream = self.keys.requests(self.policy)
        ensure_group(self.r, self.keys, self.policy)
        last_stats = 0.0
        while not self.stop_ev.is_set():
            self.m.tick()
            if time.monotonic() - last_stats > self.stats_every_s:
                self.write_stats()
                last_stats = time.monotonic()
            got = self.r.xreadgroup(GROUP, self.wid, {stream: ">"}, count=self.max_batch, block=50)
            if not got:
                continue
            entries = got[0][1]
            t_start = time.time()
            t0 = time.perf_counter()
            reqs = [(eid, Request.from_fields(f)) for eid, f in entries]
            decode_s = time.perf_counter() - t0
            queue_s = [t_start - int(eid.split(b"-")[0]) / 1000.0 for eid, _ in reqs]
            t1 = time.perf_counter()
            time.sleep(self.infer_s)  # the "forward pass"
            infer_s = time.perf_counter() - t1
            t2 = time.perf_counter()
            replies = [Reply(seq=q.seq, status="ok", nonce=q.nonce, action=b"a" * 16, queue_ms=queue_s[i] * 1e3,
                             infer_ms=infer_s * 1e3, batch=len(reqs), worker=self.wid).to_fields()
                       for i, (_, q) in enumerate(reqs)]
            encode_s = time.perf_counter() - t2
            pipe = self.r.pipeline(transaction=False)
            for (eid, q), fields in zip(reqs, replies, strict=True):
                pipe.xadd(self.keys.replies(self.policy, q.rollout), fields, maxlen=64)
                pipe.xack(stream, GROUP, eid)
            pipe.execute()
            self.served += len(reqs)
            self.batches += 1
            self.busy += infer_s
            self.m.observe_batch(len(reqs), queue_s, infer_s, decode_s, encode_s)
            self.m.count_request("ok", len(reqs))
        self.r.hdel(self.keys.worker_stats(self.policy), self.wid)
        self.m.close()


class FakeSim(threading.Thread):
    def __init__(self, r, keys: Keys, policy: str, sid: str, metrics: SimMetrics,
                 queries_per_episode: int = 5, env_steps_per_query: int = 8, step_s: float = 0.002):
        super().__init__(daemon=True)
        self.r, self.keys, self.policy, self.sid, self.m = r, keys, policy, sid, metrics
        self.qpe, self.spq, self.step_s = queries_per_episode, env_steps_per_query, step_s
        self.stop_ev = threading.Event()
        self.rng = random.Random(sid)

    def run(self) -> None:
        stream = self.keys.requests(self.policy)
        episode = 0
        while not self.stop_ev.is_set():
            rollout = f"{self.sid}-ep{episode}"
            reply_key = self.keys.replies(self.policy, rollout)
            last = "0-0"
            infra = False
            for seq in range(self.qpe):
                self.m.tick()
                t0 = time.perf_counter()
                self.r.xadd(stream, Request(rollout, seq, b"obs", 5000).to_fields())
                got = self.r.xread({reply_key: last}, count=1, block=5000)
                if not got:
                    infra = True
                    break
                last = got[0][1][0][0]
                self.m.observe_round_trip(time.perf_counter() - t0)
                time.sleep(self.step_s * self.spq)
                self.m.env_steps(self.spq)
                if self.stop_ev.is_set():
                    break
            self.r.delete(reply_key)
            self.m.episode("infra" if infra else "success" if self.rng.random() < 0.6 else "failure")
            episode += 1
        self.m.close()
