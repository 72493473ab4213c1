"""Every Redis key rolloutq uses, in one place.

Keys of one request shard share a Redis Cluster hash tag (`{policy#shard}`), so a shard's request
stream, its dead letters and the reply streams of the rollouts mapped to it live in one slot: a
worker can write a reply and ack the request in one MULTI even on a cluster, and a policy's load
can later be split over several shards without changing the message format. A rollout always maps
to the same shard (`shard_of`).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from rolloutq.broker.errors import ProtocolError

GROUP = "workers"
"""Consumer group every policy worker of a policy joins on its request streams."""

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def check_name(kind: str, value: str) -> str:
    """Policy, rollout and run names go into key names: keep them to a safe alphabet."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ProtocolError(
            f"{kind} {value!r} is not a valid name: use 1-128 characters from A-Z a-z 0-9 _ . -"
        )
    return value


def shard_of(rollout: str, shards: int) -> int:
    """The shard a rollout's requests go to (stable across processes and languages: CRC-32)."""
    if shards <= 1:
        return 0
    return zlib.crc32(rollout.encode()) % shards


@dataclass(frozen=True)
class Keys:
    """Key names under one namespace (default `rq`)."""

    ns: str = "rq"

    def __post_init__(self) -> None:
        check_name("namespace", self.ns)

    # -- policies ---------------------------------------------------------------------------
    def tag(self, policy: str, shard: int = 0) -> str:
        return "{" + f"{check_name('policy', policy)}#{shard}" + "}"

    def requests(self, policy: str, shard: int = 0) -> str:
        """Stream of requests for one shard of a policy; consumer group `workers`."""
        return f"{self.ns}:req:{self.tag(policy, shard)}"

    def replies(self, policy: str, rollout: str, shard: int = 0) -> str:
        """Reply stream of one rollout (expires when idle)."""
        return f"{self.ns}:rep:{self.tag(policy, shard)}:{check_name('rollout', rollout)}"

    def reply_prefix(self, policy: str, shard: int = 0) -> str:
        """Workers only write replies to keys under this prefix."""
        return f"{self.ns}:rep:{self.tag(policy, shard)}:"

    def dead_letters(self, policy: str, shard: int = 0) -> str:
        """Requests that could not be served after the allowed number of deliveries."""
        return f"{self.ns}:dlq:{self.tag(policy, shard)}"

    def policy_meta(self, policy: str) -> str:
        """Hash: schema, action horizon, model id, shard count (what an external simulator reads)."""
        return f"{self.ns}:policy:{check_name('policy', policy)}"

    def policies(self) -> str:
        """Set of policy names that have published metadata."""
        return f"{self.ns}:policies"

    def worker_stats(self, policy: str) -> str:
        """Hash of worker id -> JSON stats snapshot, refreshed by each live worker."""
        return f"{self.ns}:workers:{check_name('policy', policy)}"

    # -- evaluation sweeps ------------------------------------------------------------------
    def sweep_meta(self, run: str) -> str:
        """Hash: the sweep's config (policy, task, episode count, attempts allowed)."""
        return f"{self.ns}:sweep:{check_name('run', run)}:meta"

    def sweep_todo(self, run: str) -> str:
        """List of episode specs (JSON) not yet taken by a simulator."""
        return f"{self.ns}:sweep:{check_name('run', run)}:todo"

    def sweep_leases(self, run: str) -> str:
        """Hash episode id -> JSON lease (simulator, expiry) of episodes being run."""
        return f"{self.ns}:sweep:{check_name('run', run)}:leases"

    def sweep_results(self, run: str) -> str:
        """Stream of finished-episode records (JSON), read by the controller."""
        return f"{self.ns}:sweep:{check_name('run', run)}:results"

    def sweep_stop(self, run: str) -> str:
        """String key: present once the controller wants the simulators of a run to stop."""
        return f"{self.ns}:sweep:{check_name('run', run)}:stop"

    def sweep_rejected(self, run: str) -> str:
        """Counter of finish calls the sweep refused (no lease for the episode, or not its token)."""
        return f"{self.ns}:sweep:{check_name('run', run)}:rejected"
