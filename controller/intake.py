"""Which results the controller believes: lease tokens it mints, and the checks every result passes.

Simulators write results to the sweep's stream, and anyone logged in as the `sim` role can write
there. So the controller mints a token per (run, episode, attempt) from a secret that never leaves
its process, puts it in each spec it queues, and takes a result only when it carries the token of
the attempt the controller is waiting for, with the seed it assigned and every field a record must
have. Anything else is rejected, counted per reason (`rejected_results` in summary.json) and
reported once per reason; nothing a simulator writes can stop the controller. A malformed record
that carries the right token came from the simulator that ran the attempt: it stands as a
`sim_error` (reason `malformed_result`), so the episode is re-run instead of waited for forever.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rolloutq.broker.sweep import EpisodeSpec, ResultEntry
from rolloutq.sim_workers.outcomes import OUTCOMES, SIM_ERROR, SUCCESS

log = logging.getLogger("rolloutq.intake")

MALFORMED = "malformed"
UNKNOWN_EPISODE = "unknown_episode"
BAD_TOKEN = "bad_token"
WRONG_SEED = "wrong_seed"
STALE_ATTEMPT = "stale_attempt"
DUPLICATE = "duplicate"

MALFORMED_RESULT = "malformed_result"
"""The `reason` of the `sim_error` that stands for a malformed record with the right token."""

_INT = "an integer"
_NUMBER = "a finite number"
_STR = "a string"
_BOOL = "true or false"
_NUMBERS = "a list of finite numbers"
_INTS = "a list of integers"

RECORD_FIELDS: dict[str, str] = {
    "episode": _INT, "seed": _INT, "attempt": _INT, "outcome": _STR, "reason": _STR, "success": _BOOL,
    "episode_return": _NUMBER, "steps": _INT, "wall_s": _NUMBER, "started_at": _NUMBER, "policy_calls": _INT,
    "round_trip_ms": _NUMBERS, "batch_sizes": _INTS, "sim": _STR, "error": _STR,
}
"""Every field of `rolloutq.sim_workers.runner.EpisodeRecord.to_dict()` and the kind of value it must hold."""

_NON_NEGATIVE = ("attempt", "steps", "wall_s", "started_at", "policy_calls")


def lease_token(secret: bytes, run: str, episode: int, attempt: int) -> str:
    """The token of one attempt of one episode: HMAC-SHA256 over `run:episode:attempt`, 32 hex digits."""
    return hmac.new(secret, f"{run}:{episode}:{attempt}".encode(), hashlib.sha256).hexdigest()[:32]


class Rejected(Exception):
    """A result the controller does not take: `reason` is the counter, the message says what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


_CHECKS: dict[str, Callable[[Any], bool]] = {
    _INT: _is_int,
    _NUMBER: _is_number,
    _STR: lambda v: isinstance(v, str),
    _BOOL: lambda v: isinstance(v, bool),
    _NUMBERS: lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
    _INTS: lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
}


def check_record(record: Any) -> dict[str, Any]:
    """The record when it has every field of an episode record with a value of the right kind;
    else `Rejected(MALFORMED)` naming the first field that is wrong."""
    if not isinstance(record, dict):
        what = "no record field" if record is None else "not valid JSON" if isinstance(record, bytes) else \
            f"a JSON {type(record).__name__}, not an object"
        raise Rejected(MALFORMED, f"the record is {what}")
    for name, kind in RECORD_FIELDS.items():
        if name not in record:
            raise Rejected(MALFORMED, f"field {name!r} is missing")
        if not _CHECKS[kind](record[name]):
            raise Rejected(MALFORMED, f"field {name!r} must be {kind}, got {_show(record[name])}")
    for name in _NON_NEGATIVE:
        if record[name] < 0:
            raise Rejected(MALFORMED, f"field {name!r} must not be negative, got {record[name]}")
    if record["outcome"] not in OUTCOMES:
        raise Rejected(MALFORMED, f"field 'outcome' must be one of {', '.join(OUTCOMES)}, got "
                                  f"{_show(record['outcome'])}")
    if record["success"] != (record["outcome"] == SUCCESS):
        raise Rejected(MALFORMED, f"field 'success' is {record['success']} but 'outcome' is {record['outcome']!r}")
    return record


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


@dataclass
class _Episode:
    seed: int
    outstanding: int | None
    """The attempt queued and not yet answered; None while the controller holds its last answer."""
    answered: int = 0
    """The last attempt whose result was taken."""


class ResultIntake:
    """The controller's side of the lease tokens for one run: mints specs, checks results."""

    def __init__(self, run: str, report: Callable[[str], None] | None = None, secret: bytes | None = None) -> None:
        self.run = run
        self._secret = secret or secrets.token_bytes(32)
        self._report = report or log.warning
        self._episodes: dict[int, _Episode] = {}
        self.rejected: dict[str, int] = {}
        """Results not taken, per reason (summary.json `rejected_results`)."""

    def spec(self, episode: int, seed: int, attempt: int = 1, gen: int = 0) -> EpisodeSpec:
        """The spec to queue for an attempt, with its token; from now on only this attempt's result is taken."""
        ep = self._episodes.get(episode)
        if ep is None:
            self._episodes[episode] = ep = _Episode(seed, attempt)
        ep.outstanding = attempt
        return EpisodeSpec(episode, ep.seed, attempt, gen, lease_token(self._secret, self.run, episode, attempt))

    def hand_back(self, episode: int, gen: int) -> EpisodeSpec | None:
        """The spec to queue again for an expired lease (`SweepQueue.expire_leases`): the attempt still
        outstanding, or None when the controller waits for nothing of this episode."""
        ep = self._episodes.get(episode)
        if ep is None or ep.outstanding is None:
            return None
        return EpisodeSpec(episode, ep.seed, ep.outstanding, gen,
                           lease_token(self._secret, self.run, episode, ep.outstanding))

    def accept(self, entry: ResultEntry) -> dict[str, Any] | None:
        """The entry's record when the controller takes it (the attempt is then answered); else None,
        counted under its reason and reported the first time that reason comes up."""
        try:
            return self._check(entry)
        except Rejected as e:
            self._count(entry, e)
            return None

    def _count(self, entry: ResultEntry, e: Rejected) -> None:
        n = self.rejected.get(e.reason, 0)
        self.rejected[e.reason] = n + 1
        if n == 0:
            self._report(f"rejected a result ({e.reason}), stream entry {entry.entry_id.decode()}: {e}; further "
                         f"'{e.reason}' results are only counted (rejected_results in summary.json)")

    def _check(self, entry: ResultEntry) -> dict[str, Any]:
        try:
            record = check_record(entry.record)
        except Rejected as e:
            stand_in = self._stand_in(entry, e)
            if stand_in is None:
                raise
            self._count(entry, e)
            return stand_in
        episode, attempt = record["episode"], record["attempt"]
        ep = self._episodes.get(episode)
        if ep is None:
            raise Rejected(UNKNOWN_EPISODE, f"episode {episode} is not in this run")
        want = lease_token(self._secret, self.run, episode, attempt)
        if not hmac.compare_digest(entry.token.encode(), want.encode()):
            raise Rejected(BAD_TOKEN, f"the token of episode {episode} attempt {attempt} is "
                                      f"{'missing' if not entry.token else 'not the one its spec carried'}")
        if record["seed"] != ep.seed:
            raise Rejected(WRONG_SEED, f"field 'seed' of episode {episode} is {record['seed']}; the run assigned "
                                       f"{ep.seed}")
        if attempt == ep.outstanding:
            ep.outstanding, ep.answered = None, attempt
            return record
        if attempt == ep.answered:
            raise Rejected(DUPLICATE, f"episode {episode} attempt {attempt} was answered already")
        raise Rejected(STALE_ATTEMPT, f"field 'attempt' of episode {episode} is {attempt}; the run waits for "
                                      f"{ep.outstanding if ep.outstanding is not None else 'no attempt'}")

    def _stand_in(self, entry: ResultEntry, e: Rejected) -> dict[str, Any] | None:
        """A `sim_error` record for a malformed one that carries the token of the attempt the
        controller waits for; None when the record does not say which attempt it is, or is not it."""
        rec = entry.record
        if not isinstance(rec, dict) or not _is_int(rec.get("episode")) or not _is_int(rec.get("attempt")):
            return None
        episode, attempt = rec["episode"], rec["attempt"]
        ep = self._episodes.get(episode)
        if ep is None or attempt != ep.outstanding or not hmac.compare_digest(
                entry.token.encode(), lease_token(self._secret, self.run, episode, attempt).encode()):
            return None
        ep.outstanding, ep.answered = None, attempt
        started = rec.get("started_at")
        return {"episode": episode, "seed": ep.seed, "attempt": attempt, "outcome": SIM_ERROR,
                "reason": MALFORMED_RESULT, "success": False, "episode_return": 0.0, "steps": 0, "wall_s": 0.0,
                "started_at": started if _is_number(started) and started >= 0 else time.time(), "policy_calls": 0,
                "round_trip_ms": [], "batch_sizes": [], "sim": rec["sim"] if isinstance(rec.get("sim"), str) else "",
                "error": f"the simulator reported a malformed result: {e}"}
