"""summary.json, the human summary, report.md and the exit decision count every outcome where it
belongs: the success rate is over success + failure + policy_error; sim errors and infrastructure
losses are counted apart, named with their reasons, and decide the exit status."""

from __future__ import annotations

import json

from rolloutq.controller.report import write_report
from rolloutq.controller.results import (
    EXIT_INCOMPLETE,
    EXIT_SIM_ERRORS,
    group_table,
    human_summary,
    summarize,
    verdict,
    wilson_interval,
)


def _record(episode: int, outcome: str, reason: str = "") -> dict:
    return {"episode": episode, "seed": episode, "outcome": outcome, "reason": reason,
            "success": outcome == "success", "episode_return": 0.0, "steps": 10, "wall_s": 1.0, "policy_calls": 2,
            "round_trip_ms": [1.0, 2.0], "batch_sizes": [1, 1], "sim": "s", "attempt": 1, "error": "",
            "started_at": 1000.0 + episode}


RECORDS = ([_record(i, "success") for i in range(3)] + [_record(3, "failure")]
           + [_record(4, "policy_error", "bad_action"), _record(5, "policy_error", "inference_failed"),
              _record(6, "policy_error", "bad_action")]
           + [_record(7, "sim_error", "sim_raised"), _record(8, "infra", "policy_timeout")])


def test_summary_scores_policy_errors_as_failures_and_counts_the_rest_apart():
    s = summarize(RECORDS, 10.0, {"mean_batch_size": 1.0}, {"episodes": 9})
    assert s["episodes"] == 7 and s["successes"] == 3 and s["success_rate"] == round(3 / 7, 4)
    lo, hi = s["success_ci95"]
    assert lo < 3 / 7 < hi
    assert s["outcomes"] == {"success": 3, "failure": 1, "policy_error": 3, "sim_error": 1, "infra": 1}
    assert s["reasons"] == {"policy_error": {"bad_action": 2, "inference_failed": 1},
                            "sim_error": {"sim_raised": 1}, "infra": {"policy_timeout": 1}}
    assert (s["policy_errors"], s["sim_errors"], s["infra_failures"]) == (3, 1, 1)
    assert s["env_steps"] == 90  # every episode's steps happened, scored or not


def test_human_summary_names_the_outcomes_and_reasons(tmp_path):
    text = human_summary(summarize(RECORDS, 10.0, {"mean_batch_size": 1.0}, {"episodes": 9}), tmp_path)
    lines = text.splitlines()
    assert lines[0].startswith("7 scored episodes: 3 successes, success rate 42.9%")
    assert lines[1] == ("outcomes: success 3, failure 1, policy_error 3 (scored as failures; bad_action 2, "
                        "inference_failed 1), sim_error 1 (not scored; sim_raised 1), infra 1 (not scored; "
                        "policy_timeout 1)")
    clean = summarize(RECORDS[:4], 10.0, {"mean_batch_size": 1.0}, {"episodes": 4})
    assert human_summary(clean, tmp_path).splitlines()[1] == "outcomes: success 3, failure 1"


def test_exit_decision():
    s = summarize(RECORDS, 10.0, {}, {"episodes": 9})
    assert verdict(s, 9, max_sim_errors=0).exit_code == EXIT_SIM_ERRORS
    message = verdict(s, 9, max_sim_errors=0).message
    assert "1 episode(s) ended in sim_error" in message and "sim_raised 1" in message
    assert "--max-sim-errors 0" in message
    # sim errors allowed: the infra loss still leaves the run incomplete
    ending = verdict(s, 9, max_sim_errors=1)
    assert ending.exit_code == EXIT_INCOMPLETE and "only 7 of 9 episodes were scored" in ending.message
    done = summarize(RECORDS[:8], 10.0, {}, {"episodes": 8})
    assert verdict(done, 8, max_sim_errors=1).exit_code == 0
    assert verdict(summarize(RECORDS[:7], 10.0, {}, {"episodes": 7}), 7, 0).exit_code == 0


def test_records_without_a_known_outcome_are_never_scored():
    missing = {**_record(0, "x"), "status": "ok", "success": True}
    del missing["outcome"]
    s = summarize([missing, {**_record(1, "made-up"), "success": True}], 1.0, {}, {"episodes": 2})
    assert s["outcomes"] == {"success": 0, "failure": 0, "policy_error": 0, "sim_error": 0, "infra": 2}
    assert s["episodes"] == 0 and s["successes"] == 0


def test_report_shows_the_outcome_table(tmp_path):
    s = summarize(RECORDS, 10.0, {"mean_batch_size": 1.0}, {"episodes": 9, "task": "reach", "backend": "null"})
    report = write_report(tmp_path, RECORDS, s).read_text()
    assert "| policy_error | 3 | bad_action 2, inference_failed 1 | the policy broke the episode; scored as a " \
           "failure |" in report
    assert "| sim_error | 1 | sim_raised 1 |" in report and "| failure | 1 | - |" in report
    assert "| policy errors (scored as failures) | 3 |" in report
    assert (tmp_path / "success_per_seed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Per group" not in report  # the task groups no episodes
    json.dumps(s)  # summary.json stays plain JSON


def test_report_has_the_per_group_table_when_the_summary_has_groups(tmp_path):
    s = summarize(RECORDS, 10.0, {"mean_batch_size": 1.0}, {"episodes": 9, "task": "libero", "backend": "null"})
    s["groups"] = group_table(RECORDS, lambda seed: f"task {seed % 2}")
    report = write_report(tmp_path, RECORDS, s).read_text()
    # task 0: seeds 0 2 (success), 4 6 (policy_error), 8 (infra); task 1: 1 (success), 3, 5, 7 (sim_error)
    (lo0, hi0), (lo1, hi1) = ([round(x, 4) for x in wilson_interval(k, n)] for k, n in ((2, 4), (1, 3)))  # as stored
    assert f"| task 0 | 4 | 2 | 50.0% | {lo0:.1%} – {hi0:.1%} | 1 |" in report
    assert f"| task 1 | 3 | 1 | 33.3% | {lo1:.1%} – {hi1:.1%} | 1 |" in report
    assert "Mean of the group rates: 41.7%" in report
    assert report.index("## Per group") < report.index("## Outcome per seed")


def test_eval_cli_exits_with_the_verdict_after_printing_the_summary(tmp_path, monkeypatch):
    from rolloutq.controller.cli import app
    from typer.testing import CliRunner

    summary = summarize(RECORDS, 10.0, {"mean_batch_size": 1.0}, {"episodes": 9})
    seen = {}

    def fake_run_eval(settings, console):
        seen["max_sim_errors"] = settings.max_sim_errors
        return summary

    monkeypatch.setattr("rolloutq.controller.eval.run_eval", fake_run_eval)
    runner = CliRunner()
    got = runner.invoke(app, ["eval", "-n", "9", "--out", str(tmp_path)])
    assert got.exit_code == EXIT_SIM_ERRORS and seen["max_sim_errors"] == 0
    assert "outcomes: success 3" in got.output and "1 episode(s) ended in sim_error" in got.output
    got = runner.invoke(app, ["eval", "-n", "9", "--out", str(tmp_path), "--overwrite", "--max-sim-errors", "1"])
    assert got.exit_code == EXIT_INCOMPLETE and seen["max_sim_errors"] == 1
