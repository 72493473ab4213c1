"""The message schema: fields of request and reply stream entries, and the error codes.

Stream entries are flat maps of byte strings. Numbers travel as decimal ASCII so that any
language (or `redis-cli`) can read them; the observation and the action chunk travel as one
msgpack value each (see `rolloutq.broker.codec`). docs/PROTOCOL.md is the normative description.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rolloutq.broker import PROTOCOL_VERSION
from rolloutq.broker.errors import ProtocolError
from rolloutq.broker.keys import check_name


class Status(StrEnum):
    """Reply status: `ok` or an error code a simulator can act on."""

    OK = "ok"
    BAD_REQUEST = "bad_request"  # fields missing or malformed; fix the client
    BAD_OBSERVATION = "bad_observation"  # observation bytes rejected by the codec
    FRAMES_UNAVAILABLE = "frames_unavailable"  # shared-memory frames not reachable from the worker
    SCHEMA_MISMATCH = "schema_mismatch"  # observation does not match the policy's published schema
    UNSUPPORTED_VERSION = "unsupported_version"  # protocol version this worker does not speak
    EXPIRED = "expired"  # deadline passed before inference; not retried by the worker
    INFERENCE_FAILED = "inference_failed"  # the model raised on this observation (also alone); final
    BAD_ACTION = "bad_action"  # the policy's output holds NaN/inf or cannot be encoded; final
    DEAD_LETTER = "dead_letter"  # delivered the allowed number of times without an answer (worker crashes)
    SHUTTING_DOWN = "shutting_down"  # worker stopping; the request was released for another worker


RETRYABLE = frozenset({Status.SHUTTING_DOWN})
"""Statuses after which a client resends the same request (same nonce) after a backoff."""

POLICY_FAULTS = frozenset({Status.INFERENCE_FAILED, Status.BAD_ACTION})
"""Statuses that are the policy's fault: an episode that gets one is scored as a policy error."""

SENDER_FAULTS = frozenset({Status.BAD_REQUEST, Status.BAD_OBSERVATION, Status.FRAMES_UNAVAILABLE,
                           Status.SCHEMA_MISMATCH, Status.UNSUPPORTED_VERSION})
"""Statuses that say the simulator sent something the policy cannot take (its own fault or a setup error)."""

MAX_SCALAR_FIELD = 20
"""Bytes allowed in a numeric field (`v`, `seq`, `ttl_ms`, `steps`, `resend`)."""
MAX_ENDED = 16
"""Rollouts a request may name in `ended`."""
MAX_ENTRY_FIELDS = 16
"""Fields allowed in one request entry; a worker refuses more before reading any of them."""

_NONCE = re.compile(r"^[A-Za-z0-9_\-]{8,64}$")
_ENTRY_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


def new_nonce() -> str:
    """A request's nonce: 16 random hex characters, chosen by the client, echoed by the worker."""
    return secrets.token_hex(8)


def check_nonce(value: str) -> str:
    if not isinstance(value, str) or not _NONCE.match(value):
        raise ProtocolError("field 'nonce' must be 8-64 characters from A-Z a-z 0-9 _ - (a fresh random value "
                            "per request, reused by its resends)")
    return value


def _text(fields: dict[Any, Any], name: str, cap: int = MAX_SCALAR_FIELD) -> str:
    v = fields.get(name.encode(), fields.get(name))
    if v is None:
        raise ProtocolError(f"entry has no {name!r} field")
    if len(v) > cap:
        raise ProtocolError(f"field {name!r} is {len(v)} bytes long; at most {cap} are allowed")
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"field {name!r} is not UTF-8 text") from None
    return str(v)


def _int(fields: dict[Any, Any], name: str, default: int | None = None) -> int:
    if default is not None and name.encode() not in fields and name not in fields:
        return default
    raw = _text(fields, name)
    try:
        return int(raw, 10)
    except ValueError:
        raise ProtocolError(f"field {name!r} must be a decimal integer, got {raw[:40]!r}") from None


def _float(fields: dict[Any, Any], name: str) -> float:
    raw = _text(fields, name)
    try:
        return float(raw)
    except ValueError:
        raise ProtocolError(f"field {name!r} must be a number, got {raw[:40]!r}") from None


def _bytes(fields: dict[Any, Any], name: str) -> bytes:
    v = fields.get(name.encode(), fields.get(name))
    if v is None:
        raise ProtocolError(f"entry has no {name!r} field")
    return v if isinstance(v, bytes) else str(v).encode()


@dataclass
class Request:
    """One observation from one rollout, asking for one action chunk.

    There is no reply key on the wire: the worker derives the rollout's reply stream from the
    request stream it read and the rollout id (docs/PROTOCOL.md §2), and echoes `nonce`, which
    the client chose and checks, so a reply can never be taken for the answer to another request.
    """

    rollout: str
    seq: int
    obs: bytes
    ttl_ms: int
    nonce: str = field(default_factory=new_nonce)
    version: int = PROTOCOL_VERSION
    steps: int = 0
    """Send back only the first `steps` steps of the chunk (the ones the simulator will execute);
    0 = the whole chunk. Optional on the wire (docs/PROTOCOL.md §4.2)."""
    resend: int = 0
    """0 on the first send; n on the n-th resend of the same request (same seq and nonce)."""
    orig: str = ""
    """On a resend: the stream entry id of the first send, so a worker can tell whether the original
    is still queued or held (then the resend is dropped) without inferring it twice."""
    ended: tuple[str, ...] = ()
    """Rollouts of this client that ended since its last request (at most `MAX_ENDED`): the worker
    stops waiting for them when it gathers a batch (docs/PROTOCOL.md §4.3)."""

    def to_fields(self) -> dict[str, Any]:
        out = {
            "v": str(self.version),
            "rollout": self.rollout,
            "seq": str(self.seq),
            "nonce": self.nonce,
            "ttl_ms": str(self.ttl_ms),
            "obs": self.obs,
        }
        if self.steps:
            out["steps"] = str(self.steps)
        if self.resend:
            out["resend"] = str(self.resend)
            if self.orig:
                out["orig"] = self.orig
        if self.ended:
            out["ended"] = ",".join(self.ended)
        return out

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> Request:
        """Parse and check a request entry; every field's size is checked before it is decoded
        (`obs` by the codec, which refuses it on its length before parsing it)."""
        if len(fields) > MAX_ENTRY_FIELDS:
            raise ProtocolError(f"request has {len(fields)} fields; at most {MAX_ENTRY_FIELDS} are allowed")
        version = _int(fields, "v")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {version} is not supported by this worker (it speaks "
                f"{PROTOCOL_VERSION}); upgrade the client or the worker so that they match"
            )
        rollout = check_name("rollout", _text(fields, "rollout", cap=128))
        nonce = check_nonce(_text(fields, "nonce", cap=64))
        seq = _int(fields, "seq")
        if seq < 0:
            raise ProtocolError(f"field 'seq' must be >= 0, got {seq}")
        ttl = _int(fields, "ttl_ms")
        if ttl <= 0:
            raise ProtocolError(f"field 'ttl_ms' must be > 0 (milliseconds after the entry id's time), got {ttl}")
        steps = _int(fields, "steps", default=0)
        if steps < 0:
            raise ProtocolError(f"field 'steps' must be >= 0 (0 = the whole chunk), got {steps}")
        resend = _int(fields, "resend", default=0)
        if resend < 0:
            raise ProtocolError(f"field 'resend' must be >= 0, got {resend}")
        orig = _text(fields, "orig", cap=48) if resend and (b"orig" in fields or "orig" in fields) else ""
        if orig and not _ENTRY_ID.match(orig):
            raise ProtocolError(f"field 'orig' must be a stream entry id like 1700000000000-0, got {orig!r}")
        ended: tuple[str, ...] = ()
        if b"ended" in fields or "ended" in fields:
            ended = tuple(check_name("rollout", r) for r in _text(fields, "ended", cap=MAX_ENDED * 129).split(","))
            if len(ended) > MAX_ENDED:
                raise ProtocolError(f"field 'ended' names {len(ended)} rollouts; at most {MAX_ENDED} are allowed")
        obs = _bytes(fields, "obs")
        return cls(rollout=rollout, seq=seq, obs=obs, ttl_ms=ttl, nonce=nonce, version=version, steps=steps,
                   resend=resend, orig=orig, ended=ended)


def peek_reply_fields(fields: dict[Any, Any]) -> tuple[str | None, int, str]:
    """What a worker can still answer a request it refused: (rollout or None when unusable, seq or
    -1, nonce or ""). Each field is used only when it is well-formed and within its size cap."""
    def get(name: str, cap: int) -> str | None:
        v = fields.get(name.encode(), fields.get(name))
        if v is None or len(v) > cap:
            return None
        try:
            return v.decode() if isinstance(v, bytes) else str(v)
        except UnicodeDecodeError:
            return None

    rollout = get("rollout", 128)
    try:
        rollout = check_name("rollout", rollout) if rollout is not None else None
    except ProtocolError:
        rollout = None
    raw_seq = get("seq", MAX_SCALAR_FIELD)
    seq = int(raw_seq) if raw_seq is not None and raw_seq.isdigit() else -1
    nonce = get("nonce", 64) or ""
    if nonce and not _NONCE.match(nonce):
        nonce = ""
    return rollout, seq, nonce


@dataclass
class Reply:
    """The answer to one request: an action chunk, or an error code with a message."""

    seq: int
    status: str
    nonce: str = ""
    """The request's nonce, echoed: a client accepts only the reply carrying the nonce it sent."""
    action: bytes = b""
    error: str = ""
    queue_ms: float = 0.0
    infer_ms: float = 0.0
    batch: int = 0
    worker: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def to_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": str(PROTOCOL_VERSION),
            "seq": str(self.seq),
            "nonce": self.nonce,
            "status": str(self.status),
            "queue_ms": f"{self.queue_ms:.3f}",
            "infer_ms": f"{self.infer_ms:.3f}",
            "batch": str(self.batch),
            "worker": self.worker,
        }
        if self.ok:
            out["action"] = self.action
        else:
            out["error"] = self.error
        return out

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> Reply:
        status = _text(fields, "status", cap=64)
        ok = status == Status.OK
        return cls(
            seq=_int(fields, "seq"),
            status=status,
            nonce=_text(fields, "nonce", cap=64) if b"nonce" in fields or "nonce" in fields else "",
            action=_bytes(fields, "action") if ok else b"",
            error="" if ok else _text(fields, "error", cap=4096),
            queue_ms=_float(fields, "queue_ms"),
            infer_ms=_float(fields, "infer_ms"),
            batch=_int(fields, "batch"),
            worker=_text(fields, "worker", cap=256),
        )


def row_keys(observation_schema: dict[str, dict[str, Any]]) -> list[str]:
    """The keys of a policy's published observation schema whose leading dimension is open (`-1`
    or null): the policy takes several rows per request (docs/PROTOCOL.md §4.1)."""
    return [k for k, spec in observation_schema.items() if spec.get("shape") and spec["shape"][0] in (None, -1)]


def first_steps(chunk: Any, steps: int) -> Any:
    """A chunk cut to its first `steps` steps: every array of two or more dimensions is cut along
    axis 1, the time axis of an action schema's `[rows, chunk_length, dim]` (docs/PROTOCOL.md
    §4.2); anything else passes unchanged. `steps` = 0 leaves the chunk whole."""
    if not steps or not isinstance(chunk, dict):
        return chunk
    return {k: v[:, :steps] if getattr(v, "ndim", 0) >= 2 else v for k, v in chunk.items()}
