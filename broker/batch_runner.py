"""The batch runner: one batch of admitted requests through the model, and an answer for each.

The forward pass runs on one inference thread (or inline, for handlers that never block), so the
worker's event loop keeps reading and admitting the next batch meanwhile. Each chunk is checked
and encoded as soon as the pass returns, and the answers go out in groups of `REPLY_GROUP` while
the rest are encoded (the first simulators step sooner: +0.02 of the model's throughput at 64
rollouts, docs/benchmarks.md). A batch that raises is split, and each request runs alone up to the
delivery limit, so one poison observation fails alone (`inference_failed`) and its batch-mates
are answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rolloutq.broker.admission import for_client, safe_message
from rolloutq.broker.codec import Codec, first_non_finite
from rolloutq.broker.errors import CodecError
from rolloutq.broker.handler import BatchHandler
from rolloutq.broker.jobs import Answer, Job
from rolloutq.broker.middleware import Middleware
from rolloutq.broker.schema import Status, first_steps
from rolloutq.broker.settings import WorkerSettings

log = logging.getLogger("rolloutq.consumer")

REPLY_GROUP = 16
"""Answers per reply pipeline: each group goes out as soon as it is encoded."""

Send = Callable[[list[Answer]], None]


class BatchRunner:
    """Runs batches through a handler and turns their chunks into answers."""

    def __init__(self, handler: BatchHandler, codec: Codec, settings: WorkerSettings,
                 middleware: list[Middleware], server_ms: Callable[[], float]) -> None:
        self.handler = handler
        self.codec = codec
        self.settings = settings
        self.middleware = middleware
        self.server_ms = server_ms
        self.worker_id = settings.worker_id
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rolloutq-infer")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, jobs: list[Job], send: Send) -> None:
        """Answer every job of the batch, handing answers to `send` as they are ready."""
        live = list(jobs)
        answers: list[Answer] = []
        for m in self.middleware:
            answers.extend(m.before_batch(live))
        if live:
            now_ms = self.server_ms()
            queue_ms = [max(0.0, now_ms - j.id_ms) for j in live]
            t0 = time.perf_counter()
            try:
                chunks = await self._infer([j.obs for j in live])
                if len(chunks) != len(live):
                    raise RuntimeError(f"backend returned {len(chunks)} chunks for {len(live)} observations")
            except Exception as e:  # a bad batch must not kill the worker
                log.error("worker %s: inference failed on a batch of %d: %s", self.worker_id, len(live), e)
                answers.extend(await self._isolate(live))
            else:
                infer_s = time.perf_counter() - t0
                rows = sum(j.rows for j in live)
                t1, encode_s = time.perf_counter(), 0.0
                for job, chunk, q in zip(live, chunks, queue_ms, strict=True):
                    if len(answers) >= REPLY_GROUP:  # on the wire while the rest are encoded
                        encode_s += time.perf_counter() - t1
                        self._hand_over(answers, send)
                        answers = []
                        await asyncio.sleep(0)
                        t1 = time.perf_counter()
                    answers.append(self._answer(job, chunk, queue_ms=q, infer_ms=infer_s * 1000, batch=rows))
                encode_s += time.perf_counter() - t1
                if answers:  # on the wire before the bookkeeping: the simulators wait for them
                    self._hand_over(answers, send)
                    answers = []
                    await asyncio.sleep(0)
                for m in self.middleware:
                    m.after_batch(live, queue_ms, infer_s, encode_s)
        if answers:
            self._hand_over(answers, send)

    def _hand_over(self, answers: list[Answer], send: Send) -> None:
        for a in answers:
            for m in self.middleware:
                m.after_answer(a)
        send(answers)

    async def _infer(self, batch: list[Any]) -> list[Any]:
        if self.handler.inline:
            return self.handler.infer(batch)
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.handler.infer, batch)

    def _answer(self, job: Job, chunk: Any, **timing: Any) -> Answer:
        """The OK answer carrying `chunk`, or `bad_action` when the chunk is not a valid action."""
        chunk = first_steps(chunk, job.request.steps)
        if self.settings.check_finite and (key := first_non_finite(chunk)) is not None:
            return job.answer(Status.BAD_ACTION, error=f"the policy's action {key!r} holds NaN or infinity",
                              worker=self.worker_id)
        try:
            payload = self.codec.encode(chunk)
        except CodecError as e:
            return job.answer(Status.BAD_ACTION, error=f"the policy's output could not be encoded: {e}",
                              worker=self.worker_id)
        return job.answer(Status.OK, action=payload, worker=self.worker_id, **timing)

    async def _isolate(self, jobs: list[Job]) -> list[Answer]:
        """After a failed batch, run its requests one by one so one poison request fails alone.

        The failed batch counts as one delivery of each of its requests, so the backend sees a request
        that always fails exactly `max_deliveries` times, like one that crashes the worker each time.
        """
        out = []
        for job in jobs:
            error = "the batch it was in failed"
            job.deliveries += 1
            for _ in range(max(0, self.settings.max_deliveries - job.deliveries + 1)):
                t0 = time.perf_counter()
                try:
                    chunk = (await self._infer([job.obs]))[0]
                except Exception as e:
                    error = for_client(e)  # the traceback stays in the log
                    log.warning("worker %s: inference failed on request %s alone: %s", self.worker_id,
                                job.entry_id.decode(), safe_message(e))
                    job.deliveries += 1
                    continue
                infer_s = time.perf_counter() - t0
                out.append(self._answer(job, chunk, infer_ms=infer_s * 1000, batch=job.rows))
                for m in self.middleware:
                    m.after_batch([job], [0.0], infer_s, 0.0)
                break
            else:
                out.append(job.answer(Status.INFERENCE_FAILED, error=f"the model raised on this observation, also "
                                      f"alone, {self.settings.max_deliveries} times ({error}); it was moved to the "
                                      "dead-letter stream", worker=self.worker_id))
        return out
