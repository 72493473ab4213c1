"""Schema checks and stacking helpers shared by backends."""

from __future__ import annotations

import numpy as np
import pytest
from rolloutq.policy_workers.batching import SchemaChecker, check_schema, flatten, split, stack

SCHEMA = {
    "video.ego_view": {"dtype": "uint8", "shape": [1, 2, 4, 4, 3]},
    "state.left_arm": {"dtype": "float32", "shape": [1, 1, 7], "finite": True},
    "annotation.human.task_description": {"kind": "text"},
}


def _obs(**over):
    obs = {"video.ego_view": np.zeros((1, 2, 4, 4, 3), np.uint8), "state.left_arm": np.zeros((1, 1, 7), np.float32),
           "annotation.human.task_description": [["pick up the apple"]]}
    obs.update(over)
    return obs


def test_flat_and_nested_gr00t_layouts_both_pass():
    assert check_schema(_obs(), SCHEMA) is None
    nested = {"video": {"ego_view": np.zeros((1, 2, 4, 4, 3), np.uint8)},
              "state": {"left_arm": np.zeros((1, 1, 7), np.float32)},
              "language": {"annotation.human.task_description": [["pick up the apple"]]}}
    assert set(flatten(nested)) == set(SCHEMA)
    assert check_schema(nested, SCHEMA) is None


def test_schema_problems_are_named():
    msg = check_schema(_obs(**{"state.left_arm": np.zeros((1, 1, 6), np.float32)}), SCHEMA)
    assert "state.left_arm has shape [1, 1, 6], expected [1, 1, 7]" in msg
    msg = check_schema(_obs(**{"video.ego_view": np.zeros((1, 2, 4, 4, 3), np.float32)}), SCHEMA)
    assert "dtype float32, expected uint8" in msg
    msg = check_schema(_obs(**{"state.left_arm": np.full((1, 1, 7), np.nan, np.float32)}), SCHEMA)
    assert "NaN or Inf" in msg
    obs = _obs(extra=np.zeros(1))
    del obs["state.left_arm"]
    msg = check_schema(obs, SCHEMA)
    assert "missing keys ['state.left_arm']" in msg and "unknown keys ['extra']" in msg
    assert "must be text" in check_schema(_obs(**{"annotation.human.task_description": np.zeros(1)}), SCHEMA)


_CASES = {
    "valid": _obs(),
    "valid, wildcard dimension": _obs(**{"state.left_arm": np.zeros((1, 1, 7), np.float32)}),
    "wrong width": _obs(**{"state.left_arm": np.zeros((1, 1, 6), np.float32)}),
    "wrong rank": _obs(**{"state.left_arm": np.zeros((1, 7), np.float32)}),
    "wrong dtype": _obs(**{"video.ego_view": np.zeros((1, 2, 4, 4, 3), np.float32)}),
    "NaN": _obs(**{"state.left_arm": np.array([[[0, 1, np.nan, 3, 4, 5, 6]]], np.float32)}),
    "Inf": _obs(**{"state.left_arm": np.array([[[0, 1, 2, 3, 4, 5, -np.inf]]], np.float32)}),
    "huge but finite": _obs(**{"state.left_arm": np.full((1, 1, 7), 3e38, np.float32)}),
    "not an array": _obs(**{"state.left_arm": [[0.0] * 7]}),
    "text not text": _obs(**{"annotation.human.task_description": [[1]]}),
    "extra key": _obs(extra=np.zeros(1)),
    "missing key": {k: v for k, v in _obs().items() if k != "state.left_arm"},
    "nested": {"video": {"ego_view": np.zeros((1, 2, 4, 4, 3), np.uint8)},
               "state": {"left_arm": np.zeros((1, 1, 7), np.float32)},
               "language": {"annotation.human.task_description": [["pick up the apple"]]}},
    "not a map": [1, 2],
    "valid rows, three": _obs(**{"video.ego_view": np.zeros((3, 2, 4, 4, 3), np.uint8),
                                 "state.left_arm": np.zeros((3, 1, 7), np.float32),
                                 "annotation.human.task_description": [["a"], ["b"], ["c"]]}),
    "rows disagree": _obs(**{"video.ego_view": np.zeros((3, 2, 4, 4, 3), np.uint8),
                             "state.left_arm": np.zeros((2, 1, 7), np.float32)}),
    "rows, one text row": _obs(**{"video.ego_view": np.zeros((2, 2, 4, 4, 3), np.uint8),
                                  "state.left_arm": np.zeros((2, 1, 7), np.float32)}),
    "rows, none": _obs(**{"video.ego_view": np.zeros((0, 2, 4, 4, 3), np.uint8),
                          "state.left_arm": np.zeros((0, 1, 7), np.float32),
                          "annotation.human.task_description": []}),
}
ROWS_SCHEMA = {k: {**v, "shape": [-1, *v["shape"][1:]]} if "shape" in v else v for k, v in SCHEMA.items()}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_schema_checker_answers_as_check_schema(case):
    """The compiled checker's fast path never changes the verdict or the message."""
    schema = {**SCHEMA, "state.left_arm": {**SCHEMA["state.left_arm"], "shape": [1, None, 7]}} \
        if "wildcard" in case else ROWS_SCHEMA if "rows" in case else SCHEMA
    assert SchemaChecker(schema)(_CASES[case]) == check_schema(_CASES[case], schema)
    assert (check_schema(_CASES[case], schema) is None) == (case.startswith("valid") or case in ("nested",
                                                                                           "huge but finite"))


def test_rows_must_agree_when_the_schema_leaves_them_open():
    """A leading dimension of -1: several rows per request, the same number in every array and
    one text row each; with a leading 1 a request of several rows is refused as before."""
    assert check_schema(_CASES["valid rows, three"], ROWS_SCHEMA) is None
    msg = check_schema(_CASES["rows disagree"], ROWS_SCHEMA)
    assert "disagree on their number of rows" in msg and "video.ego_view has 3, state.left_arm has 2" in msg
    msg = check_schema(_CASES["rows, one text row"], ROWS_SCHEMA)
    assert "must be a list of 2 text rows" in msg and "got 1" in msg
    assert "arrays have no rows" in check_schema(_CASES["rows, none"], ROWS_SCHEMA)
    assert SchemaChecker(ROWS_SCHEMA).rows(_CASES["valid rows, three"]) == 3
    nested = {"video": {"ego_view": np.zeros((2, 2, 4, 4, 3), np.uint8)},
              "state": {"left_arm": np.zeros((2, 1, 7), np.float32)}, "language": {}}
    assert SchemaChecker(ROWS_SCHEMA).rows(nested) == 2
    # a schema with a leading 1 (or none): every request is one rollout, whatever its arrays hold
    assert SchemaChecker(SCHEMA).rows(_CASES["valid rows, three"]) == 1
    assert SchemaChecker({}).rows({"tag": np.zeros((2,), np.int64)}) == 1
    assert "expected [1, 2, 4, 4, 3]" in check_schema(_CASES["valid rows, three"], SCHEMA)


def test_stack_and_split_round_trip():
    batch = [_obs(**{"state.left_arm": np.full((1, 1, 7), i, np.float32)}) for i in range(3)]
    stacked = stack(batch)
    assert stacked["state.left_arm"].shape == (3, 1, 7)
    assert stacked["annotation.human.task_description"] == ["pick up the apple"] * 3
    parts = split({"a": np.arange(6).reshape(3, 2)}, 3)
    assert [p["a"].tolist() for p in parts] == [[[0, 1]], [[2, 3]], [[4, 5]]]
