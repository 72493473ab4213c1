"""Stacking a vectorized simulator's envs into one request of rows, and splitting the reply back."""

from __future__ import annotations

import numpy as np
import pytest
from rolloutq.broker.errors import ProtocolError
from rolloutq.sim_workers.rows import split_rows, stack_rows


def test_envs_stack_into_rows_and_the_reply_splits_back_in_order():
    envs = [{"state.q": np.full((1, 1, 2), i, np.float32), "task": [["pick"]] if i else "pick"} for i in range(3)]
    stacked = stack_rows(envs)
    assert stacked["state.q"].shape == (3, 1, 2) and stacked["state.q"][:, 0, 0].tolist() == [0, 1, 2]
    assert stacked["task"] == [["pick"]] * 3  # a bare string counts as one row
    reply = {"action": np.arange(3 * 4 * 1, dtype=np.float32).reshape(3, 4, 1), "info.note": "random weights"}
    parts = split_rows(reply, 3)
    assert [p["action"].shape for p in parts] == [(1, 4, 1)] * 3
    assert [p["action"][0, 0, 0] for p in parts] == [0.0, 4.0, 8.0] and parts[2]["info.note"] == "random weights"


def test_a_reply_without_a_row_per_env_and_nested_observations_are_refused():
    with pytest.raises(ProtocolError, match="answered 3 rows with action of shape"):
        split_rows({"action": np.zeros((1, 4, 1), np.float32)}, 3)
    with pytest.raises(ProtocolError, match="turn rows_per_request off"):
        stack_rows([{"state": {"q": np.zeros((1, 2))}}])
