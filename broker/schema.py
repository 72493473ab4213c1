"""The message schema: fields of request and reply stream entries, and the error codes.

Stream entries are flat maps of byte strings. Numbers travel as decimal ASCII so that any
language (or `redis-cli`) can read them; the observation and the action chunk travel as one
msgpack value each (see `broker.codec`). docs/PROTOCOL.md is the normative description.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from broker import PROTOCOL_VERSION
from broker.errors import ProtocolError


class Status(StrEnum):
    """Reply status: `ok` or an error code a simulator can act on."""

    OK = "ok"
    BAD_REQUEST = "bad_request"  # fields missing or malformed; fix the client
    BAD_OBSERVATION = "bad_observation"  # observation bytes rejected by the codec
    FRAMES_UNAVAILABLE = "frames_unavailable"  # shared-memory frames not reachable from the worker
    SCHEMA_MISMATCH = "schema_mismatch"  # observation does not match the policy's published schema
    UNSUPPORTED_VERSION = "unsupported_version"  # protocol version this worker does not speak
    EXPIRED = "expired"  # deadline passed before inference; not retried by the worker
    INFERENCE_FAILED = "inference_failed"  # the backend raised; the request may be retried
    DEAD_LETTER = "dead_letter"  # gave up after the allowed number of deliveries
    SHUTTING_DOWN = "shutting_down"  # worker stopping; the request was released for another worker


RETRYABLE = frozenset({Status.INFERENCE_FAILED, Status.SHUTTING_DOWN})


def _text(fields: dict[Any, Any], name: str) -> str:
    v = fields.get(name.encode(), fields.get(name))
    if v is None:
        raise ProtocolError(f"entry has no {name!r} field")
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
        return int(raw)
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
    """One observation from one rollout, asking for one action chunk."""

    rollout: str
    seq: int
    reply_to: str
    obs: bytes
    ttl_ms: int
    version: int = PROTOCOL_VERSION
    steps: int = 0
    """Send back only the first `steps` steps of the chunk (the ones the simulator will execute);
    0 = the whole chunk. Optional on the wire (docs/PROTOCOL.md §4.2)."""

    def to_fields(self) -> dict[str, Any]:
        out = {
            "v": str(self.version),
            "rollout": self.rollout,
            "seq": str(self.seq),
            "reply_to": self.reply_to,
            "ttl_ms": str(self.ttl_ms),
            "obs": self.obs,
        }
        if self.steps:
            out["steps"] = str(self.steps)
        return out

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> Request:
        version = _int(fields, "v")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {version} is not supported by this worker (it speaks "
                f"{PROTOCOL_VERSION}); upgrade the client or the worker so that they match"
            )
        seq = _int(fields, "seq")
        ttl = _int(fields, "ttl_ms")
        if seq < 0 or ttl <= 0:
            raise ProtocolError("seq must be >= 0 and ttl_ms > 0")
        steps = _int(fields, "steps", default=0)
        if steps < 0:
            raise ProtocolError(f"steps must be >= 0 (0 = the whole chunk), got {steps}")
        return cls(
            rollout=_text(fields, "rollout"),
            seq=seq,
            reply_to=_text(fields, "reply_to"),
            obs=_bytes(fields, "obs"),
            ttl_ms=ttl,
            version=version,
            steps=steps,
        )


@dataclass
class Reply:
    """The answer to one request: an action chunk, or an error code with a message."""

    seq: int
    status: str
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
        status = _text(fields, "status")
        ok = status == Status.OK
        return cls(
            seq=_int(fields, "seq"),
            status=status,
            action=_bytes(fields, "action") if ok else b"",
            error="" if ok else _text(fields, "error"),
            queue_ms=_float(fields, "queue_ms"),
            infer_ms=_float(fields, "infer_ms"),
            batch=_int(fields, "batch"),
            worker=_text(fields, "worker"),
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
