"""Cross-cutting parts of a policy worker, as hooks in the spirit of dramatiq's middleware.

The worker calls every middleware at three points: before a batch runs (`before_batch` may take
requests out of it and answer them instead), after each answer is decided (`after_answer`) and
after a batch ran (`after_batch`). Deadlines and accounting (the stats snapshot and the metrics
hooks) live here instead of inside the serving loop; which answers are dead-lettered is a property
of the answer itself (`rolloutq.broker.jobs.Answer.dead_letter`).
"""

from __future__ import annotations

from collections.abc import Callable

from rolloutq.broker.jobs import Answer, Job
from rolloutq.broker.schema import Status
from rolloutq.broker.worker_stats import ConsumerMetrics, WorkerStats


class Middleware:
    """A hook into the worker's handling of requests; override what you need."""

    def before_batch(self, jobs: list[Job]) -> list[Answer]:
        """Remove requests from `jobs` (in place) that must not run, and return their answers."""
        return []

    def after_answer(self, answer: Answer) -> None:
        """Called once per answer, before it is written."""

    def after_batch(self, jobs: list[Job], queue_ms: list[float], infer_s: float, encode_s: float) -> None:
        """Called after a forward pass over `jobs` (which are then answered)."""


class Deadlines(Middleware):
    """Requests whose deadline (on the Redis clock) passed while they queued are answered `expired`
    without reaching the model."""

    def __init__(self, server_ms: Callable[[], float], worker_id: str) -> None:
        self.server_ms = server_ms
        self.worker_id = worker_id

    def before_batch(self, jobs: list[Job]) -> list[Answer]:
        now = self.server_ms()
        late = [j for j in jobs if now > j.id_ms + j.request.ttl_ms]
        if not late:
            return []
        jobs[:] = [j for j in jobs if now <= j.id_ms + j.request.ttl_ms]
        return [j.answer(Status.EXPIRED, error="deadline passed while queued; add policy workers or lengthen the "
                         "deadline", worker=self.worker_id) for j in late]


class Accounting(Middleware):
    """The worker's own numbers (`WorkerStats`, published for `rolloutq top` and the controller)
    and the metrics hooks (`ConsumerMetrics`, e.g. Prometheus)."""

    def __init__(self, stats: WorkerStats, metrics: ConsumerMetrics) -> None:
        self.stats = stats
        self.metrics = metrics

    def after_answer(self, answer: Answer) -> None:
        s, status = self.stats, str(answer.reply.status)
        if answer.reply.ok:
            s.replies_ok += 1
        else:
            s.errors[status] = s.errors.get(status, 0) + 1
        if answer.dead_letter:
            s.dead_letters_total += 1
        self.metrics.on_reply(status)

    def after_batch(self, jobs: list[Job], queue_ms: list[float], infer_s: float, encode_s: float) -> None:
        s = self.stats
        rows = sum(j.rows for j in jobs)
        decode_s = sum(j.decode_s for j in jobs)
        s.batches_total += 1
        s.batched_items_total += rows
        s.busy_s_total += infer_s
        s.infer_ms.append(infer_s * 1000)
        s.queue_ms.extend(queue_ms)
        s.batch_sizes.append(rows)
        s.decode_s_total += decode_s
        s.encode_s_total += encode_s
        self.metrics.on_batch(rows, [q / 1000 for q in queue_ms], infer_s, decode_s, encode_s)
