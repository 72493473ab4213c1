"""A vectorised simulator's envs as requests of several rows (docs/PROTOCOL.md §4.1): their
observations stacked into one request, the reply's chunk split back per env. One request costs
the policy worker one read, decode and reply for all its rows, where one request per env costs N.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np
from rolloutq.broker.client import PolicyClient
from rolloutq.broker.errors import BrokerError, ProtocolError
from rolloutq.sim_workers.base import Chunk, Obs
from rolloutq.sim_workers.errors import BadActionChunk, SimulatorFailed
from rolloutq.sim_workers.outcomes import ACTION_SCHEMA_MISMATCH


def stack_rows(observations: list[Obs]) -> Obs:
    """Per-env observations (leading dimension 1, flat keys) as one observation of len(observations)
    rows: arrays concatenated, each text field one row per env."""
    out: dict[str, Any] = {}
    for key, first in observations[0].items():
        values = [o[key] for o in observations]
        if isinstance(first, np.ndarray):
            out[key] = np.concatenate(values)
        elif isinstance(first, str | list):
            out[key] = [row for v in values for row in ([[v]] if isinstance(v, str) else v)]
        else:
            raise ProtocolError(f"observation key {key!r} holds a {type(first).__name__}: only flat maps of "
                                "arrays and text go as rows; turn rows_per_request off for this simulator")
    return out


def split_rows(chunk: Chunk, n: int) -> list[Chunk]:
    """A chunk of n rows as n one-row chunks (what is not an array, e.g. a note, goes to each)."""
    for k, v in chunk.items():
        if isinstance(v, np.ndarray) and (not v.ndim or v.shape[0] != n):
            raise ProtocolError(f"the policy answered {n} rows with {k} of shape {v.shape}: it should have "
                                f"{n} rows; is its schema's open leading dimension really rows?")
    return [{k: v[j:j + 1] if isinstance(v, np.ndarray) else v for k, v in chunk.items()} for j in range(n)]


async def act_rows(client: PolicyClient, rollout: str, observations: list[Obs], rows: int,
                    steps: int = 0) -> list[Any]:
    """`act_many`'s results (a result or an exception per env: a BrokerError, or BadActionChunk when
    the reply's rows do not fit), asked as requests of <= `rows` rows under one rollout id (one
    request in flight per group at a time, groups concurrently)."""
    groups = [observations[i:i + rows] for i in range(0, len(observations), rows)]

    async def one(g: int) -> list[Any]:
        try:
            obs = stack_rows(groups[g])
        except ProtocolError as e:  # the simulator's observations cannot go as rows
            raise SimulatorFailed(str(e)) from e
        try:
            res = await client.act(f"{rollout}.g{g}", obs, steps=steps)
        except BrokerError as e:
            return [e] * len(groups[g])
        try:
            chunks = split_rows(res.chunk, len(groups[g]))
        except ProtocolError as e:  # the policy answered a different number of rows
            return [BadActionChunk(ACTION_SCHEMA_MISMATCH, str(e))] * len(groups[g])
        return [dataclasses.replace(res, chunk=chunk) for chunk in chunks]

    return [r for part in await asyncio.gather(*[one(g) for g in range(len(groups))]) for r in part]
