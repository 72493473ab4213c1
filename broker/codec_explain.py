"""msgpack's errors in words a sender can act on (its own text is often empty or cryptic)."""

from __future__ import annotations

import re

import msgpack

_TOO_LONG = re.compile(r"(\d+) exceeds max_(array|map|str|bin|ext)_len\((\d+)\)")
_UNITS = {"array": "list of {n} items", "map": "map of {n} entries", "str": "string of {n} bytes",
          "bin": "bin value of {n} bytes"}


def explain(e: Exception) -> str:
    """What msgpack's parser objected to."""
    if isinstance(e, msgpack.FormatError):
        return "a byte that starts no msgpack value, such as the reserved 0xc1"
    if isinstance(e, msgpack.StackError | RecursionError):
        return "maps/lists nested deeper than the parser allows"
    if isinstance(e, UnicodeDecodeError):
        return "a str value is not UTF-8; send raw bytes as bin"
    if isinstance(e, OverflowError):
        return "an integer does not fit in 64 bits"
    text = str(e)
    if "incomplete input" in text:
        return "the bytes end in the middle of the value: truncated"
    m = _TOO_LONG.search(text)
    if m:
        n, kind, cap = m.groups()
        if kind == "ext":
            return "a msgpack extension type, which is not allowed"
        return f"a {_UNITS[kind].format(n=n)} exceeds the limit of {cap}"
    if isinstance(e, TypeError) and "unhashable" in text:
        return "a map key is a map or a list; map keys must be str"
    return short(e)


def short(e: Exception) -> str:
    """The first line of an exception's text (its type name if it has none), at most 200 characters."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
