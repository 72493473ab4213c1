"""Admission: one request entry in, a `Job` for the batcher or a refusal out. No I/O.

The checks run cheapest first, and every field's size is checked before it is decoded: the
envelope (`Request.from_fields`), the deadline, the delivery count, the observation bytes (the
codec), non-finite floats, the policy's schema, the row count. A refusal names what the sender
must fix and goes to the rollout's own reply stream, derived here from the request stream's shard
and the validated rollout id; a request whose rollout id is unusable has nowhere safe to be
answered and is only dead-lettered.
"""

from __future__ import annotations

import logging
import re
import time

from rolloutq.broker.codec import Codec, first_non_finite
from rolloutq.broker.errors import BrokerError, CodecError, ProtocolError, SharedFramesUnavailable
from rolloutq.broker.handler import BatchHandler
from rolloutq.broker.jobs import Answer, Job
from rolloutq.broker.keys import Keys
from rolloutq.broker.schema import Reply, Request, Status, peek_reply_fields
from rolloutq.broker.settings import WorkerSettings

log = logging.getLogger("rolloutq.consumer")


class Admission:
    """The worker's door: decides, for one entry, whether it is batched or answered at once."""

    def __init__(self, handler: BatchHandler, codec: Codec, keys: Keys, settings: WorkerSettings,
                 shards: dict[str, int], max_rows: int) -> None:
        self.handler = handler
        self.codec = codec
        self.keys = keys
        self.settings = settings
        self.shards = shards
        self.max_rows = max_rows
        self.worker_id = settings.worker_id

    def refusal(self, stream: str, entry_id: bytes, fields: dict, code: str, error: str) -> Answer:
        """The answer to an entry refused before it could be parsed, echoing its seq and nonce where
        they are readable; on the rollout's stream when its id is usable."""
        rollout, seq, nonce = peek_reply_fields(fields)
        reply_to = None if rollout is None else self.keys.replies(self.settings.policy, rollout, self.shards[stream])
        return Answer(stream, entry_id, reply_to, Reply(seq, code, nonce=nonce, error=error, worker=self.worker_id))

    def admit(self, stream: str, entry_id: bytes, fields: dict, deliveries: int, server_ms: float) -> Job | Answer:
        try:
            request = Request.from_fields(fields)
        except ProtocolError as e:
            code = Status.UNSUPPORTED_VERSION if "protocol version" in str(e) else Status.BAD_REQUEST
            return self.refusal(stream, entry_id, fields, code, str(e))
        reply_to = self.keys.replies(self.settings.policy, request.rollout, self.shards[stream])

        def refuse(code: str, error: str) -> Answer:
            return Answer(stream, entry_id, reply_to, Reply(request.seq, code, nonce=request.nonce, error=error,
                                                            worker=self.worker_id))

        id_ms = int(entry_id.split(b"-")[0])
        if server_ms > id_ms + request.ttl_ms:
            return refuse(Status.EXPIRED, f"deadline of {request.ttl_ms} ms passed before inference; resend with a "
                          "longer deadline or add policy workers")
        if deliveries > self.settings.max_deliveries:
            return refuse(Status.DEAD_LETTER, f"request was delivered {deliveries - 1} times without an answer "
                          "(worker crashes); it was moved to the dead-letter stream")
        t0 = time.perf_counter()
        try:
            obs = self.codec.decode(request.obs)
        except SharedFramesUnavailable as e:
            return refuse(Status.FRAMES_UNAVAILABLE, str(e))
        except CodecError as e:
            return refuse(Status.BAD_OBSERVATION, str(e))
        except Exception as e:  # the codec's own checks missed something: still the sender's bytes' fault
            log.warning("worker %s: codec raised %s on request %s", self.worker_id, safe_message(e),
                        entry_id.decode())
            return refuse(Status.BAD_OBSERVATION, "observation bytes could not be decoded: send a msgpack map "
                          "of arrays (docs/PROTOCOL.md §5)")
        decode_s = time.perf_counter() - t0
        if self.settings.check_finite and (key := first_non_finite(obs)) is not None:
            return refuse(Status.BAD_OBSERVATION, f"observation key {key!r} holds NaN or infinity: the simulator "
                          "produced a non-finite value")
        if self.settings.validate_schema:
            try:
                problem = self.handler.validate(obs)
            except Exception as e:
                log.warning("worker %s: schema check raised %s", self.worker_id, safe_message(e))
                problem = f"observation does not match the policy's schema ({for_client(e)})"
            if problem:
                return refuse(Status.SCHEMA_MISMATCH, problem[:1000])
        rows = self.handler.rows(obs)
        if rows > self.max_rows:
            return refuse(Status.SCHEMA_MISMATCH, f"observation carries {rows} rows; this worker runs batches of "
                          f"at most {self.max_rows} rows: send at most that many per request")
        return Job(entry_id, stream, request, obs, id_ms, deliveries, decode_s, rows, reply_to)


def for_client(e: BaseException) -> str:
    """What a sender is told of an exception raised on its request: the type and the first line of
    the message (a KeyError names the missing key), with file paths cut out; never a traceback."""
    return _PATH.sub("<path>", safe_message(e))


def safe_message(e: BaseException) -> str:
    """One line, no traceback, no object reprs beyond 200 characters (for logs)."""
    if isinstance(e, BrokerError):
        return str(e)[:200]
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"[:200]


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s/\\:'\"]+)+")
