"""Helpers backends share: flatten nested observations, check them against a published schema,
stack a list of per-request observations along the batch axis, and split a batched chunk back."""

from __future__ import annotations

from typing import Any

import numpy as np
from rolloutq.broker.schema import row_keys
from rolloutq.policy_workers.base import Chunk, Obs


def flatten(obs: Any, prefix: str = "") -> dict[str, Any]:
    """`{"video": {"ego_view": a}}` -> `{"video.ego_view": a}`; flat keys pass through.

    The GR00T modality dict keeps its language under `language` with the full key inside
    (`{"language": {"annotation.human.task_description": ...}}`): that level adds no prefix.
    """
    if not isinstance(obs, dict):
        return {prefix[:-1]: obs} if prefix else {"": obs}
    out: dict[str, Any] = {}
    for k, v in obs.items():
        if isinstance(v, dict):
            out.update(flatten(v, "" if (not prefix and k == "language") else f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_schema(obs: Any, schema: dict[str, dict[str, Any]], allow_extra: bool = False) -> str | None:
    """None if `obs` matches `schema`, else a message naming the first problems found."""
    if not isinstance(obs, dict):
        return f"observation must be a map of named arrays, got {type(obs).__name__}"
    flat = flatten(obs)
    problems: list[str] = []
    missing = [k for k in schema if k not in flat and not schema[k].get("optional")]
    if missing:
        problems.append(f"missing keys {missing}")
    if not allow_extra:
        extra = [k for k in flat if k not in schema]
        if extra:
            problems.append(f"unknown keys {extra[:8]}")
    for key, spec in schema.items():
        if key not in flat:
            continue
        value = flat[key]
        if spec.get("kind") == "text":
            if not _is_text(value):
                problems.append(f"{key} must be text (a string or a list of lists of strings)")
            continue
        if not isinstance(value, np.ndarray):
            problems.append(f"{key} must be an array, got {type(value).__name__}")
            continue
        if "dtype" in spec and value.dtype != np.dtype(spec["dtype"]):
            problems.append(f"{key} has dtype {value.dtype}, expected {spec['dtype']}")
        shape = spec.get("shape")
        if shape is not None and (len(shape) != value.ndim or any(
                s not in (None, -1) and s != d for s, d in zip(shape, value.shape, strict=False))):
            problems.append(f"{key} has shape {list(value.shape)}, expected {shape}")
        if spec.get("finite") and value.dtype.kind == "f" and not np.isfinite(value).all():
            problems.append(f"{key} contains NaN or Inf")
    if not problems:
        problems.extend(_row_problems(flat, schema))
    if not problems:
        return None
    return "observation does not match the policy's schema: " + "; ".join(problems)


class SchemaChecker:
    """`check_schema` against one schema, with a fast path for the common case.

    A worker checks every request against the same schema. A flat observation whose keys are
    exactly the schema's is checked here with the schema's specs worked out once (types, dtypes,
    fixed dimensions, finiteness, text); anything else, and anything that fails, goes through
    `check_schema`, so the answer and its message are always `check_schema`'s.
    """

    def __init__(self, schema: dict[str, dict[str, Any]], allow_extra: bool = False) -> None:
        self.schema = schema
        self.allow_extra = allow_extra
        self._keys = frozenset(schema)
        self._arrays: list[tuple[str, np.dtype | None, int | None, tuple[tuple[int, int], ...]]] = []
        self._finite: list[str] = []
        self._texts: list[str] = []
        for key, spec in schema.items():
            if spec.get("kind") == "text":
                self._texts.append(key)
                continue
            shape = spec.get("shape")
            fixed = tuple((i, s) for i, s in enumerate(shape or ()) if s not in (None, -1))
            dtype = np.dtype(spec["dtype"]) if "dtype" in spec else None
            self._arrays.append((key, dtype, None if shape is None else len(shape), fixed))
            if spec.get("finite"):
                self._finite.append(key)
        self._rows = row_keys(schema)

    def __call__(self, obs: Any) -> str | None:
        if type(obs) is dict and obs.keys() == self._keys and self._fits(obs):
            return None
        return check_schema(obs, self.schema, self.allow_extra)

    def rows(self, obs: Any) -> int:
        """How many rows a (checked) observation carries: the leading dimension of the schema's
        open-ended arrays, 1 when the schema fixes it (every request is then one rollout)."""
        if not self._rows or not isinstance(obs, dict):
            return 1
        key = self._rows[0]
        value = obs[key] if key in obs else flatten(obs).get(key)
        return value.shape[0] if isinstance(value, np.ndarray) and value.ndim and value.shape[0] else 1

    def _fits(self, obs: dict[str, Any]) -> bool:
        for key, dtype, ndim, fixed in self._arrays:
            v = obs[key]
            if type(v) is not np.ndarray or (dtype is not None and v.dtype != dtype):
                return False
            if ndim is not None:
                shape = v.shape
                if len(shape) != ndim:
                    return False
                for i, s in fixed:
                    if shape[i] != s:
                        return False
        if self._finite:
            floats = [obs[k].ravel() for k in self._finite if obs[k].dtype.kind == "f"]
            if floats and not np.isfinite(np.concatenate(floats)).all():
                return False
        if self._rows:
            n = obs[self._rows[0]].shape[0]
            if n == 0 or any(obs[k].shape[0] != n for k in self._rows) or (n > 1 and any(
                    type(obs[k]) is not list or len(obs[k]) != n for k in self._texts)):
                return False
        return all(_is_text(obs[k]) for k in self._texts)


def _row_problems(flat: dict[str, Any], schema: dict[str, dict[str, Any]]) -> list[str]:
    """Where the schema leaves the leading dimension open, every array and text field sent as a
    list must carry the same number of rows, at least one."""
    keys = [k for k in row_keys(schema) if isinstance(flat.get(k), np.ndarray) and flat[k].ndim]
    counts = {k: flat[k].shape[0] for k in keys}
    if len(set(counts.values())) > 1:
        return ["arrays disagree on their number of rows (leading dimension): "
                + ", ".join(f"{k} has {n}" for k, n in list(counts.items())[:8])]
    if not counts:
        return []
    n = next(iter(counts.values()))
    if n == 0:
        return ["arrays have no rows (leading dimension 0): send at least one"]
    texts = [k for k, spec in schema.items() if spec.get("kind") == "text" and k in flat]
    return [f"{k} must be a list of {n} text rows ([[text], ...], one per row of the arrays), got "
            f"{len(flat[k]) if isinstance(flat[k], list) else 1}" for k in texts
            if n > 1 and not (isinstance(flat[k], list) and len(flat[k]) == n)]


def _is_text(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, list):
        return all(_is_text(v) for v in value)
    return False


def text_of(value: Any) -> str:
    """The single string in a text field sent as `s`, `[s]` or `[[s]]`."""
    while isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else ""


def stack(batch: list[Obs]) -> dict[str, Any]:
    """Concatenate per-request arrays (leading dim 1) along axis 0; text becomes a list of strings."""
    flats = [flatten(o) for o in batch]
    out: dict[str, Any] = {}
    for key in flats[0]:
        values = [f[key] for f in flats]
        if isinstance(values[0], np.ndarray):
            out[key] = np.concatenate(values, axis=0)
        else:
            out[key] = [text_of(v) for v in values]
    return out


def split(batched: dict[str, np.ndarray], sizes: list[int] | int) -> list[Chunk]:
    """Inverse of `stack` for outputs: one chunk per request, each keeping a leading dim."""
    if isinstance(sizes, int):
        sizes = [1] * sizes
    out: list[Chunk] = []
    start = 0
    for n in sizes:
        out.append({k: np.ascontiguousarray(v[start:start + n]) for k, v in batched.items()})
        start += n
    return out
