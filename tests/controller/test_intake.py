"""The controller's checks on results: every way a result can be wrong has its reason and its line."""

from __future__ import annotations

import pytest
from rolloutq.broker.sweep import ResultEntry
from rolloutq.controller.intake import RECORD_FIELDS, ResultIntake
from rolloutq.sim_workers.runner import EpisodeRecord


def _record(**over) -> dict:
    rec = EpisodeRecord(episode=1, seed=11, outcome="failure", steps=4, wall_s=0.5, started_at=1e9,
                        policy_calls=1, round_trip_ms=[2.5], batch_sizes=[1], sim="s0").to_dict()
    return {**rec, **over}


def _entry(record, token: str) -> ResultEntry:
    return ResultEntry(b"1-0", record, b"", token)


@pytest.fixture
def intake():
    lines: list[str] = []
    it = ResultIntake("run", report=lines.append)
    it.lines = lines
    for ep in range(3):
        it.spec(ep, 10 + ep)
    return it


def test_every_field_of_an_episode_record_is_checked():
    assert set(RECORD_FIELDS) == set(_record())


def test_a_genuine_result_is_taken_once(intake):
    token = intake.spec(1, 11).token
    assert intake.accept(_entry(_record(), token)) == _record()
    assert intake.accept(_entry(_record(), token)) is None
    assert intake.rejected == {"duplicate": 1}
    assert intake.lines == ["rejected a result (duplicate), stream entry 1-0: episode 1 attempt 1 was answered "
                            "already; further 'duplicate' results are only counted (rejected_results in summary.json)"]


@pytest.mark.parametrize(("record", "says"), [
    ({k: v for k, v in _record().items() if k != "started_at"}, "field 'started_at' is missing"),
    (_record(steps="4"), "field 'steps' must be an integer, got str"),
    (_record(steps=True), "field 'steps' must be an integer, got bool"),
    (_record(wall_s=float("nan")), "field 'wall_s' must be a finite number"),
    (_record(round_trip_ms=[1.0, "x"]), "field 'round_trip_ms' must be a list of finite numbers"),
    (_record(wall_s=-1.0), "field 'wall_s' must not be negative"),
    (_record(outcome="great"), "field 'outcome' must be one of success, failure, policy_error, sim_error, infra"),
    (_record(outcome="success"), "field 'success' is False but 'outcome' is 'success'"),
    (b"\x00{", "the record is not valid JSON"),
    ([1, 2], "the record is a JSON list, not an object"),
    (None, "the record is no record field"),
])
def test_malformed_results_are_rejected_naming_the_field(intake, record, says):
    assert intake.accept(_entry(record, "f" * 32)) is None
    assert intake.rejected == {"malformed": 1}
    assert says in intake.lines[0], intake.lines


def test_a_malformed_result_with_the_right_token_stands_as_a_sim_error_and_is_rerun(intake):
    """The simulator that ran the attempt sent something broken: the episode must not wait forever."""
    first = intake.spec(1, 11)
    broken = {k: v for k, v in _record(episode_return=float("nan")).items() if k != "steps"}
    got = intake.accept(_entry(broken, first.token))
    assert (got["outcome"], got["reason"], got["attempt"], got["seed"]) == ("sim_error", "malformed_result", 1, 11)
    assert got["started_at"] == 1e9 and "field 'episode_return' must be a finite number" in got["error"]
    assert intake.rejected == {"malformed": 1}
    assert intake.accept(_entry(broken, first.token)) is None  # once only
    assert intake.rejected == {"malformed": 2}
    second = intake.spec(1, 11, attempt=2)
    assert intake.hand_back(1, 1).token == second.token


def test_huge_numbers_do_not_raise(intake):
    assert intake.accept(_entry(_record(steps=10**400), "x")) is None
    assert intake.rejected == {"bad_token": 1}


def test_token_seed_attempt_and_episode_are_the_controllers(intake):
    first = intake.spec(1, 11)
    assert intake.accept(_entry(_record(), "")) is None  # no token
    assert intake.accept(_entry(_record(), "f" * 32)) is None  # a guessed one
    assert intake.accept(_entry(_record(attempt=2), first.token)) is None  # attempt changed: token no longer fits
    assert intake.accept(_entry(_record(episode=2, seed=12), first.token)) is None  # another episode's token
    assert intake.accept(_entry(_record(seed=99), first.token)) is None
    assert intake.accept(_entry(_record(episode=7), first.token)) is None
    assert intake.rejected == {"bad_token": 4, "wrong_seed": 1, "unknown_episode": 1}
    assert len(intake.lines) == 3  # one line per reason
    assert "field 'seed' of episode 1 is 99; the run assigned 11" in intake.lines[1]
    assert intake.accept(_entry(_record(), first.token)) is not None


def test_only_the_outstanding_attempt_is_taken(intake):
    first = intake.spec(1, 11)
    intake.accept(_entry(_record(outcome="infra"), first.token))
    second = intake.spec(1, 11, attempt=2)
    assert intake.accept(_entry(_record(outcome="infra"), first.token)) is None  # attempt 1 again, late
    assert intake.rejected == {"duplicate": 1}
    third = intake.spec(1, 11, attempt=3)
    assert intake.accept(_entry(_record(attempt=2), second.token)) is None
    assert intake.rejected == {"duplicate": 1, "stale_attempt": 1}
    assert "field 'attempt' of episode 1 is 2; the run waits for 3" in intake.lines[1]
    assert intake.accept(_entry(_record(attempt=3), third.token))["attempt"] == 3


def test_hand_back_gives_the_outstanding_attempt_or_nothing(intake):
    second = intake.spec(1, 11, attempt=2)
    back = intake.hand_back(1, gen=3)
    assert (back.episode, back.seed, back.attempt, back.gen, back.token) == (1, 11, 2, 3, second.token)
    intake.accept(_entry(_record(attempt=2), second.token))
    assert intake.hand_back(1, gen=4) is None  # answered: nothing to run again
    assert intake.hand_back(42, gen=1) is None  # not an episode of this run
