"""The client's rules (`rolloutq.broker.client_core.Exchange`) walked through step by step, without Redis:
the test plays Redis and the clock."""

from __future__ import annotations

import numpy as np
import pytest
from rolloutq.broker.client_core import (
    ActResult,
    Call,
    Cancel,
    Done,
    Exchange,
    Lookup,
    Pause,
    RolloutCursor,
    SendAndRead,
)
from rolloutq.broker.codec import MsgpackNumpyCodec
from rolloutq.broker.errors import PolicyTimeout, RedisUnavailable
from rolloutq.broker.schema import Reply, Status
from rolloutq.broker.settings import ClientSettings

STREAM = "rq:req:{p#0}"
REPLIES = "rq:rep:{p#0}:r0"
CODEC = MsgpackNumpyCodec()


def start(settings: ClientSettings, now: float = 0.0, last_id: bytes | None = b"0-0",
          rand=lambda: 0.5) -> tuple[Exchange, RolloutCursor]:
    """One call for rollout r0 (a jitter factor of exactly 1 unless told otherwise)."""
    cursor = RolloutCursor(last_id=last_id)
    call = Call.begin(cursor, "r0", b"\x80", 0, STREAM, REPLIES, now=now, deadline_s=settings.deadline_s)
    return Exchange([call], settings, "p", CODEC.decode, rand=rand), cursor


def reply(nonce: str, status: str = Status.OK, seq: int = 0) -> dict:
    return Reply(seq=seq, status=status, nonce=nonce, action=CODEC.encode({"a": np.arange(3.0)}), error="stopping",
                 batch=4, worker="w1").to_fields()


def test_a_call_is_resent_with_what_is_left_of_its_deadline_and_takes_only_its_own_reply():
    exchange, cursor = start(ClientSettings(reply_timeout_s=1.0, deadline_s=10.0), now=100.0, last_id=None)
    assert cursor.seq == 1  # the rollout's next call takes the next seq, whatever this one's outcome

    lookup = exchange.next(100.0)  # a rollout's first call reads past an earlier run's replies
    assert isinstance(lookup, Lookup) and lookup.reply_keys == [REPLIES]
    exchange.took(lookup, [[(b"5-0", reply("an-earlier-run"))]], 100.0)

    first = exchange.next(100.0)
    assert isinstance(first, SendAndRead) and first.reads == {REPLIES: b"5-0"} and first.block_ms == 1000
    [send] = first.sends
    assert send.stream == STREAM and "resend" not in send.fields and "orig" not in send.fields
    assert send.fields["seq"] == "0" and send.fields["ttl_ms"] == "10000"
    nonce = send.fields["nonce"]
    exchange.took(first, [b"7-0", None], 101.0)  # no reply within the reply timeout

    resend = exchange.next(101.0)
    assert isinstance(resend, SendAndRead)
    [again] = resend.sends
    assert again.fields["resend"] == "1" and again.fields["orig"] == "7-0" and again.fields["ttl_ms"] == "9000"
    assert again.fields["nonce"] == nonce and again.fields["seq"] == "0"
    someone_elses = [[REPLIES.encode(), [(b"9-0", reply("n0t-my-nonce"))]]]
    exchange.took(resend, [b"8-0", someone_elses], 101.25)
    assert cursor.last_id == b"9-0"

    read = exchange.next(101.25)  # skipped: read on until the resend's reply timeout
    assert isinstance(read, SendAndRead) and read.sends == [] and read.reads == {REPLIES: b"9-0"}
    assert read.block_ms == 750
    exchange.took(read, [[[REPLIES.encode(), [(b"10-0", reply(nonce))]]]], 101.5)

    done = exchange.next(101.5)
    assert isinstance(done, Done) and done.cancels == [] and cursor.last_id == b"10-0"
    [result] = done.results
    assert isinstance(result, ActResult) and result.chunk["a"].tolist() == [0.0, 1.0, 2.0]
    assert result.sends == 2 and result.seq == 0 and result.round_trip_ms == 1500 and result.worker == "w1"


def test_a_call_out_of_resends_gives_up_and_lists_its_sends_to_cancel():
    exchange, _ = start(ClientSettings(reply_timeout_s=1.0, deadline_s=10.0, max_resends=1))
    for t, entry_id in ((0.0, b"1-0"), (1.0, b"2-0")):
        step = exchange.next(t)
        assert isinstance(step, SendAndRead) and len(step.sends) == 1
        exchange.took(step, [entry_id, None], t)
    done = exchange.next(2.0)
    assert isinstance(done, Done) and done.cancels == [Cancel(STREAM, [b"1-0", b"2-0"])]
    [error] = done.results
    assert isinstance(error, PolicyTimeout) and "rollout 'r0' step 0" in str(error) and "(2 sends)" in str(error)


def test_an_error_reply_is_final_and_one_with_seq_minus_one_still_matches_by_nonce():
    exchange, _ = start(ClientSettings())
    step = exchange.next(0.0)
    exchange.took(step, [b"1-0", [[REPLIES.encode(), [(b"2-0", reply(step.sends[0].fields["nonce"],
                                                                      Status.BAD_REQUEST, seq=-1))]]]], 0.1)
    done = exchange.next(0.1)
    assert isinstance(done, Done) and done.cancels == []  # answered: nothing left to delete
    assert done.results[0].code == Status.BAD_REQUEST


def test_a_retryable_status_and_an_unreachable_redis_back_off_before_sending_again():
    exchange, _ = start(ClientSettings(reply_timeout_s=1.0, deadline_s=3.0, backoff_s=0.1))
    step = exchange.next(0.0)
    nonce = step.sends[0].fields["nonce"]
    exchange.took(step, [b"1-0", [[REPLIES.encode(), [(b"2-0", reply(nonce, Status.SHUTTING_DOWN))]]]], 0.0)
    wait = exchange.next(0.0)  # backoff_s x 2^1 before the resend, reading meanwhile
    assert isinstance(wait, SendAndRead) and wait.sends == [] and wait.block_ms == 200
    resend = exchange.next(0.2)
    assert resend.sends[0].fields["resend"] == "1" and resend.sends[0].fields["nonce"] == nonce

    exchange.failed(ConnectionError("connection refused"), 0.2)  # the resend may be lost: send it again
    pause = exchange.next(0.3)
    assert isinstance(pause, Pause) and pause.seconds == pytest.approx(0.1)
    again = exchange.next(0.4)
    assert isinstance(again, SendAndRead) and again.sends[0].fields["resend"] == "1"

    exchange.failed(ConnectionError("connection refused"), 2.7)  # a backoff of 0.4 s: past the deadline
    done = exchange.next(2.7)
    assert isinstance(done, Done) and done.cancels == [Cancel(STREAM, [b"1-0"])]
    assert isinstance(done.results[0], RedisUnavailable) and "connection refused" in str(done.results[0])
