"""The AMQP core's one transition table and its errors: a closed world (every next state is a
state with a row), every illegal publishing-mode switch has its RabbitMQ message, the wire's
errors carry reply codes pamqp knows, and misuse by the driver is our error, not the peer's."""

from __future__ import annotations

import pytest
from pamqp import commands, exceptions

from tidings import errors
from tidings.amqp import states as st
from tidings.amqp.connection import ServerConnection
from tidings.amqp.frames import PROTOCOL_HEADER

MODE_INPUTS = ("Confirm.Select", "Tx.Select", "Tx.Commit", "Tx.Rollback")


def test_every_next_state_has_its_own_row() -> None:
    machines = {m for m, _ in st.TRANSITIONS}
    for (machine, _), row in st.TRANSITIONS.items():
        for nxt in row.values():
            closed = nxt == st.CLOSED  # a closed channel is forgotten, not kept in a state
            assert (machine, nxt) in st.TRANSITIONS or closed, (machine, nxt)
    assert machines == {st.CONNECTION, st.CHANNEL, st.MODE}
    assert {s for m, s in st.TRANSITIONS if m == st.CONNECTION} == set(st.CONNECTION_STATES)


@pytest.mark.parametrize("mode", [st.PLAIN, st.CONFIRMS, st.TRANSACTIONS])
@pytest.mark.parametrize("method", MODE_INPUTS)
def test_each_mode_switch_is_allowed_or_refused_with_a_reason(mode: str, method: str) -> None:
    allowed = st.advance(st.MODE, mode, method) is not None
    assert allowed != ((mode, method) in st.MODE_ERRORS)


def test_content_assembly_only_takes_header_then_body() -> None:
    assert st.advance(st.CHANNEL, st.IDLE, "Basic.Publish") == st.AWAIT_CONTENT_HEADER
    assert st.advance(st.CHANNEL, st.AWAIT_CONTENT_HEADER, st.BODY) is None
    assert st.advance(st.CHANNEL, st.AWAIT_CONTENT_HEADER, st.METHOD) is None
    assert st.advance(st.CHANNEL, st.AWAIT_CONTENT_BODY, st.METHOD) is None
    assert st.advance(st.CHANNEL, st.AWAIT_CONTENT_BODY, st.LAST_BODY) == st.IDLE
    assert "Queue.Declare" not in st.NAMED_CHANNEL_METHODS  # an idle channel stays idle
    assert "Channel.CloseOk" in st.NAMED_CHANNEL_METHODS
    assert st.advance(st.CHANNEL, st.IDLE, "Channel.CloseOk") is None  # 505, as RabbitMQ


def test_protocol_errors_are_the_peers_and_carry_known_reply_codes() -> None:
    remote = [errors.FrameError, errors.ProtocolHeaderMismatch, errors.FrameSyntaxError,
              errors.UnexpectedMethodError, errors.ChannelError, errors.UnexpectedFrameError,
              errors.NotImplementedByServerError]
    for cls in remote:
        assert issubclass(cls, errors.RemoteProtocolError)
        assert issubclass(cls, errors.TidingsError)
        assert cls.closes_connection
        assert cls.reply_code in exceptions.CLASS_MAPPING, cls
    assert [c.reply_code for c in remote] == [501, 501, 502, 503, 504, 505, 540]
    assert not issubclass(errors.LocalProtocolError, errors.RemoteProtocolError)
    assert errors.FrameError("x", method=commands.Basic.Publish).method is commands.Basic.Publish


def test_a_driver_that_decides_out_of_turn_gets_a_local_protocol_error() -> None:
    conn = ServerConnection({})
    conn.receive_data(PROTOCOL_HEADER)
    with pytest.raises(errors.LocalProtocolError, match="login accepted"):
        conn.accept_login()  # no start-ok has arrived
    assert conn.state == st.AWAIT_START_OK
