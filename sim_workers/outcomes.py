"""How every episode ends, and whose fault it was: one place that decides it.

An episode's `outcome` says how it is scored:

- `success`, `failure`: the task ended it (its own success test, its failure test or its step cap).
- `policy_error`: the policy broke the episode (a non-finite or malformed action chunk, the model
  raised on this observation). Scored as a **failure** of the policy: a policy that emits NaN
  must not lose those episodes from the denominator.
- `sim_error`: the simulator or its adapter raised, or sent something the policy worker refused
  (`rolloutq.broker.schema.SENDER_FAULTS`, e.g. a NaN observation). Re-run; not scored; a run whose sim
  errors persist exits non-zero (`rolloutq eval --max-sim-errors`).
- `infra`: no answer in time, Redis unreachable, a worker that died or stopped. Re-run; never
  scored.

`reason` is a short machine-readable word (a reply status such as `bad_action`, or one of the
runner's own: `non_finite_action`, `action_schema_mismatch`, `sim_raised`, `policy_timeout`,
`redis_unavailable`); the record's `error` keeps the human text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from rolloutq.broker.codec import first_non_finite
from rolloutq.broker.connection import REDIS_DOWN
from rolloutq.broker.errors import (
    BrokerError,
    CodecError,
    PolicyErrorReply,
    PolicyTimeout,
    RedisUnavailable,
    SharedFramesUnavailable,
)
from rolloutq.broker.schema import POLICY_FAULTS, SENDER_FAULTS
from rolloutq.sim_workers.errors import BadActionChunk, SimulatorFailed

SUCCESS = "success"
FAILURE = "failure"
POLICY_ERROR = "policy_error"
SIM_ERROR = "sim_error"
INFRA = "infra"

OUTCOMES = (SUCCESS, FAILURE, POLICY_ERROR, SIM_ERROR, INFRA)
SCORED = frozenset({SUCCESS, FAILURE, POLICY_ERROR})
"""Outcomes in the success rate's denominator."""
RERUN = frozenset({SIM_ERROR, INFRA})
"""Outcomes the controller runs again (up to `max_attempts`); the last attempt's outcome stays."""

NON_FINITE_ACTION = "non_finite_action"
ACTION_SCHEMA_MISMATCH = "action_schema_mismatch"
SIM_RAISED = "sim_raised"


@dataclass(frozen=True)
class Outcome:
    outcome: str
    reason: str
    error: str = ""


def task_end(success: bool) -> Outcome:
    """The outcome of an episode the task itself ended."""
    return Outcome(SUCCESS, "") if success else Outcome(FAILURE, "")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def classify(exc: BaseException) -> Outcome:
    """The outcome of an episode ended by `exc` (raised by the runner, the client or the simulator).
    The runners wrap what simulator calls raise in `SimulatorFailed`; any other exception that is not
    the broker's is taken for a simulator or adapter bug too."""
    if isinstance(exc, SimulatorFailed):
        cause = exc.__cause__ or exc
        return Outcome(SIM_ERROR, SIM_RAISED, f"simulator error: {type(cause).__name__}: {cause}")
    if isinstance(exc, BadActionChunk):
        return Outcome(POLICY_ERROR, exc.reason, str(exc))
    if isinstance(exc, PolicyErrorReply):
        if exc.code in POLICY_FAULTS:
            return Outcome(POLICY_ERROR, str(exc.code), str(exc))
        if exc.code in SENDER_FAULTS:
            return Outcome(SIM_ERROR, str(exc.code), str(exc))
        return Outcome(INFRA, str(exc.code), str(exc))  # expired, dead_letter, shutting_down, unknown codes
    if isinstance(exc, PolicyTimeout):
        return Outcome(INFRA, "policy_timeout", str(exc))
    if isinstance(exc, RedisUnavailable):
        return Outcome(INFRA, "redis_unavailable", str(exc))
    if isinstance(exc, SharedFramesUnavailable):
        return Outcome(SIM_ERROR, "frames_unavailable", str(exc))
    if isinstance(exc, CodecError):
        # Mostly an observation the codec cannot encode; rare a reply this client cannot decode. Either
        # way it repeats on a re-run, so it ends up in the loud bucket rather than silently unscored.
        return Outcome(SIM_ERROR, "codec_error", str(exc))
    if isinstance(exc, BrokerError):
        return Outcome(INFRA, _snake(type(exc).__name__), str(exc))
    if isinstance(exc, REDIS_DOWN):  # outside simulator calls (those raise SimulatorFailed): the sweep's Redis
        return Outcome(INFRA, "redis_unavailable", f"Redis unreachable: {type(exc).__name__}: {exc}")
    return Outcome(SIM_ERROR, SIM_RAISED, f"simulator error: {type(exc).__name__}: {exc}")


def outcome_of(record: dict[str, Any]) -> str:
    """A result record's outcome; a missing or unknown one counts as `infra` (re-run, never scored)."""
    outcome = record.get("outcome")
    return outcome if outcome in OUTCOMES else INFRA


def _dims_match(got: tuple[int, ...], want: list[Any]) -> bool:
    """`got` fits the published shape `want` of an action key: same rank; leading dimension (rows)
    as published unless open; time axis (1) between 1 and the published chunk length, since the
    runner asks for the steps it will execute only (docs/PROTOCOL.md §4.2); the rest exactly."""
    if len(got) != len(want):
        return False
    for axis, (g, w) in enumerate(zip(got, want, strict=True)):
        if w is None or w == -1:
            continue
        if axis == 1 and len(want) >= 2:
            if not 1 <= g <= int(w):
                return False
        elif g != int(w):
            return False
    return True


def check_chunk(chunk: Any, action_schema: dict[str, dict[str, Any]] | None) -> None:
    """Refuse an action chunk before the simulator sees it: `BadActionChunk` when a float holds NaN or
    infinity, or when a key of the published `action_schema` is missing or has the wrong rank, size or
    kind of dtype. Keys the schema does not name pass (a policy may add notes). None: shape unchecked."""
    if not isinstance(chunk, dict):
        raise BadActionChunk(ACTION_SCHEMA_MISMATCH, f"the policy answered a {type(chunk).__name__}, not a map of "
                                                     "action arrays")
    if (key := first_non_finite(chunk)) is not None:
        raise BadActionChunk(NON_FINITE_ACTION, f"the policy's action {key!r} holds NaN or infinity")
    for key, spec in (action_schema or {}).items():
        want = spec.get("shape")
        if want is None or spec.get("optional"):
            continue
        value = chunk.get(key)
        if not isinstance(value, np.ndarray):
            raise BadActionChunk(ACTION_SCHEMA_MISMATCH, f"the policy's action chunk has no array {key!r}, which its "
                                                         f"action schema publishes (keys: {sorted(chunk)[:8]})")
        if not _dims_match(value.shape, list(want)):
            raise BadActionChunk(ACTION_SCHEMA_MISMATCH, f"the policy's action {key!r} has shape {value.shape}; its "
                                                         f"action schema publishes {list(want)}")
        dtype = spec.get("dtype")
        if dtype is not None and np.dtype(dtype).kind == "f" and value.dtype.kind != "f":
            raise BadActionChunk(ACTION_SCHEMA_MISMATCH, f"the policy's action {key!r} is {value.dtype}; its action "
                                                         f"schema publishes {dtype}")
