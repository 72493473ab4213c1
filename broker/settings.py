"""Settings of the broker's two sides, as plain dataclasses.

They are built at the CLI edge (flags and environment variables) and passed down; nothing in the
library reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RedisSettings:
    """Where Redis is. `url=None` means: start an embedded redis-server (see `broker.embedded`)."""

    url: str | None = None
    namespace: str = "rq"
    socket_timeout_s: float = 10.0
    connect_retries: int = 8
    """Reconnect attempts (exponential backoff with jitter) before an operation fails."""


@dataclass
class ClientSettings:
    """Simulator side: how long to wait for a reply, and how often to resend."""

    reply_timeout_s: float = 30.0
    """Resend the request (same sequence number) when no reply came within this time."""
    deadline_s: float = 120.0
    """Give up on one `act` call after this long: `PolicyTimeout`. Also sent as the request's TTL."""
    max_resends: int = 3
    backoff_s: float = 0.2
    """Base delay before a resend after a retryable error reply (doubled each time, with jitter)."""
    shared_frames: bool = False
    """Send arrays of 64 KiB and more (camera frames) through shared memory instead of Redis
    (`broker.frames`). Only for simulators on the policy workers' host (same /dev/shm, same user);
    a worker that cannot reach the segment answers `frames_unavailable`."""
    frames_dir: str = "/dev/shm"
    check_finite: bool = True
    """Refuse an action chunk holding NaN or infinity (`PolicyErrorReply` with `bad_action`) before
    the simulator executes it."""
    poll_ms: float = 0.0
    """Wait for a reply by polling: sleep until shortly before the shortest of the rollout's last
    round trips, then read without blocking for up to this long past it, then block as usual. The
    simulator then skips the wake-ups of a blocked read (~1 ms on the H100 host) at the cost of a
    core spinning for a few ms per step; a reply that comes sooner than the shortest recent round
    trip waits for the sleep to end. 0: block (the default)."""


@dataclass
class BatchSettings:
    """Triton-style dynamic batching: dispatch at `max_batch_size` or when the oldest waited `max_wait_ms`."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    dispatch: str = "cohort"
    """`cohort`: wait for the active rollouts (closed loop; `broker.batcher.CohortBatcher`), with
    `max_wait_ms` as the first merge wait; `deadline`: Triton's rule, full batch or oldest waited
    `max_wait_ms` (`MicroBatcher`)."""
    max_inflight: int = 0
    """Requests a worker holds (read, not yet answered); 0 means 2 x max_batch_size. Keeping this
    bounded leaves the rest of the backlog in Redis for other replicas."""


@dataclass
class WorkerSettings:
    """Worker side of one policy."""

    policy: str = "default"
    worker_id: str = ""
    """Consumer name in the group; empty means host-pid."""
    batch: BatchSettings = field(default_factory=BatchSettings)
    shards: int = 1
    block_ms: int = 50
    reply_ttl_s: int = 600
    """Reply streams expire this long after their last reply."""
    reply_maxlen: int = 64
    reply_group: int = 16
    """A batch's replies go out in pipelines of this many, each as soon as it is encoded, so the
    first simulators step while the rest are encoded and written; 0 writes them in one pipeline."""
    poll_ms: float = 0.0
    """While the model is idle and waiting for rollouts that are due back (cohort dispatch), read
    without blocking for up to this long after the last arrival, instead of a blocking XREADGROUP:
    one core spins for a few ms a cycle and the requests skip the wake-ups of a blocked read and an
    idle Redis. 0: always block (the default)."""
    claim_idle_ms: int = 60_000
    """Pending entries idle longer than this are re-claimed from a dead worker (must exceed the
    slowest batch)."""
    claim_every_s: float = 5.0
    max_deliveries: int = 3
    """After this many deliveries a request goes to the dead-letter stream with an error reply."""
    stats_every_s: float = 1.0
    forget_after_s: float = 120.0
    """Consumers of the group that hold no request and have not read for this long (dead workers)
    are removed from it, and worker stats records not refreshed for this long are deleted."""
    dlq_maxlen: int = 10_000
    """The dead-letter stream keeps about this many of the newest entries (XADD MAXLEN ~)."""
    check_finite: bool = True
    """Refuse observations with NaN or infinity in a float array (`bad_observation`), and answer
    policy outputs with them `bad_action` instead of sending them."""
    validate_schema: bool = True
    shared_frames: bool = True
    """Accept observations whose large arrays are in shared memory (`broker.frames`); simulators
    opt in per client, and a worker on another host answers them `frames_unavailable`."""
    frames_dir: str = "/dev/shm"
