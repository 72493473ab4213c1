"""Errors raised by the broker package: one base, shallow subclasses, messages that say what to do."""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker raises."""


class CodecError(BrokerError):
    """Bytes that are not a valid rolloutq message (observation or action chunk).

    The message names the problem (which key, which limit) and never contains a traceback
    or internal state, so it is safe to send back to the client that sent the bytes.
    """


class SharedFramesUnavailable(CodecError):
    """A shared-memory frame the worker cannot reach: the simulator is on another host or namespace,
    runs as another user, or /dev/shm is full. Turn shared frames off for that simulator."""


class ProtocolError(BrokerError):
    """A stream entry that lacks fields, carries bad values or speaks another protocol version."""


class PolicyTimeout(BrokerError):
    """No reply arrived before the request's deadline (worker down, overloaded, or Redis unreachable)."""


class PolicyErrorReply(BrokerError):
    """The policy worker answered with an error status instead of an action chunk."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"policy worker replied {code}: {message}")
        self.code = code
        self.detail = message


class RedisUnavailable(BrokerError):
    """Redis could not be reached or started."""
