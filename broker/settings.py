"""Settings of the broker's two sides, as plain dataclasses.

They are built at the CLI edge (flags and environment variables) and passed down; nothing in the
library reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RedisSettings:
    """Where Redis is. `url=None` means: start an embedded redis-server (see `rolloutq.broker.embedded`)."""

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
    (`rolloutq.broker.frames`). Only for simulators on the policy workers' host (same /dev/shm, same user);
    a worker that cannot reach the segment answers `frames_unavailable`."""
    frames_dir: str = "/dev/shm"
    check_finite: bool = True
    """Refuse an action chunk holding NaN or infinity (`PolicyErrorReply` with `bad_action`) before
    the simulator executes it."""


@dataclass
class BatchSettings:
    """Cohort batching (`rolloutq.broker.batcher.CohortBatcher`): a batch goes at `max_batch_size` rows, or
    when holding it for the rollouts due back no longer pays (docs/PROTOCOL.md §4.3); `max_wait_ms` is the
    hold before the worker has measured the rollouts' think times."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
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
    """Accept observations whose large arrays are in shared memory (`rolloutq.broker.frames`); simulators
    opt in per client, and a worker on another host answers them `frames_unavailable`."""
    frames_dir: str = "/dev/shm"
