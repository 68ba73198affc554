"""Every state machine of an AMQP 0-9-1 server connection, in one transition table.

Three machines, in h11's shape (state + input → next state; anything not in the table is
illegal, and the machine's error says how):

- the **connection** (channel 0): the handshake, then ``OPEN`` until someone closes it. Inputs
  are the connection-class methods the peer sends and the two decisions the driver takes
  (``login accepted``, ``vhost opened``). An illegal input is 503 COMMAND_INVALID.
- each **channel**: ``IDLE`` between methods; ``basic.publish`` starts content assembly, which
  takes exactly one content header and then body frames until the header's body size
  (``AWAIT_HEADER`` → ``AWAIT_BODY`` → ``IDLE``); ``CLOSING`` after we sent channel.close, when
  everything but close / close-ok is dropped (AMQP 0-9-1 §2.2.4). Anything else during
  content assembly is 505 UNEXPECTED_FRAME.
- each channel's **publishing mode**: plain, publisher confirms or transactions; a channel
  cannot switch between confirms and transactions, and tx.commit / tx.rollback need
  transactions (406 PRECONDITION_FAILED, a channel error, as RabbitMQ).

:func:`advance` is the only place legality is decided; the connection and the channel keep
only their current states.
"""

from __future__ import annotations

from typing import Final

# -- the connection ---------------------------------------------------------------------------

AWAIT_HEADER, AWAIT_START_OK, AWAIT_LOGIN = "AWAIT_HEADER", "AWAIT_START_OK", "AWAIT_LOGIN"
AWAIT_TUNE_OK, AWAIT_OPEN, AWAIT_OPEN_OK = "AWAIT_TUNE_OK", "AWAIT_OPEN", "AWAIT_OPEN_OK"
OPEN, CLOSING, CLOSED = "OPEN", "CLOSING", "CLOSED"
CONNECTION_STATES = (AWAIT_HEADER, AWAIT_START_OK, AWAIT_LOGIN, AWAIT_TUNE_OK, AWAIT_OPEN,
                     AWAIT_OPEN_OK, OPEN, CLOSING, CLOSED)

#: The driver's decisions, which move the handshake on like methods do.
PROTOCOL_HEADER: Final = "protocol header"
LOGIN_ACCEPTED: Final = "login accepted"
VHOST_OPENED: Final = "vhost opened"
#: We sent connection.close (CLOSING).
WE_CLOSE: Final = "we close"
#: Any frame on a channel other than 0: legal once open (held while the vhost is being opened,
#: dropped while closing).
CHANNEL_FRAME: Final = "channel frame"

# -- a channel --------------------------------------------------------------------------------

IDLE, AWAIT_CONTENT_HEADER, AWAIT_CONTENT_BODY = "IDLE", "AWAIT_CONTENT_HEADER", "AWAIT_BODY"
CHANNEL_CLOSING = "CHANNEL_CLOSING"
#: Inputs of a channel besides method names: a content header, a body frame that leaves
#: bytes to come, the body frame that completes the content, and any other method.
HEADER: Final = "content header"
BODY: Final = "content body"
LAST_BODY: Final = "last content body"
METHOD: Final = "method"

# -- a channel's publishing mode --------------------------------------------------------------

PLAIN, CONFIRMS, TRANSACTIONS = "PLAIN", "CONFIRMS", "TRANSACTIONS"

CONNECTION, CHANNEL, MODE = "connection", "channel", "mode"

#: (machine, state) → {input: next state}. Nothing else is legal.
TRANSITIONS: dict[tuple[str, str], dict[str, str]] = {
    (CONNECTION, AWAIT_HEADER): {PROTOCOL_HEADER: AWAIT_START_OK},
    (CONNECTION, AWAIT_START_OK): {"Connection.StartOk": AWAIT_LOGIN},
    (CONNECTION, AWAIT_LOGIN): {LOGIN_ACCEPTED: AWAIT_TUNE_OK},
    (CONNECTION, AWAIT_TUNE_OK): {"Connection.TuneOk": AWAIT_OPEN},
    (CONNECTION, AWAIT_OPEN): {"Connection.Open": AWAIT_OPEN_OK},
    (CONNECTION, AWAIT_OPEN_OK): {VHOST_OPENED: OPEN, CHANNEL_FRAME: AWAIT_OPEN_OK},
    (CONNECTION, OPEN): {"Connection.Close": CLOSED, "Connection.CloseOk": CLOSED,
                         "Connection.UpdateSecret": OPEN, "Connection.Blocked": OPEN,
                         "Connection.Unblocked": OPEN, WE_CLOSE: CLOSING, CHANNEL_FRAME: OPEN},
    (CONNECTION, CLOSING): {"Connection.Close": CLOSED, "Connection.CloseOk": CLOSED,
                            CHANNEL_FRAME: CLOSING},
    (CONNECTION, CLOSED): {},
    (CHANNEL, IDLE): {"Basic.Publish": AWAIT_CONTENT_HEADER, "Channel.Close": CLOSED,
                      METHOD: IDLE, WE_CLOSE: CHANNEL_CLOSING},
    (CHANNEL, AWAIT_CONTENT_HEADER): {HEADER: AWAIT_CONTENT_BODY, WE_CLOSE: CHANNEL_CLOSING},
    (CHANNEL, AWAIT_CONTENT_BODY): {BODY: AWAIT_CONTENT_BODY, LAST_BODY: IDLE,
                                    WE_CLOSE: CHANNEL_CLOSING},
    (CHANNEL, CHANNEL_CLOSING): {"Channel.Close": CLOSED, "Channel.CloseOk": CLOSED},
    (MODE, PLAIN): {"Confirm.Select": CONFIRMS, "Tx.Select": TRANSACTIONS},
    (MODE, CONFIRMS): {"Confirm.Select": CONFIRMS},
    (MODE, TRANSACTIONS): {"Tx.Select": TRANSACTIONS, "Tx.Commit": TRANSACTIONS,
                           "Tx.Rollback": TRANSACTIONS},
}

def advance(machine: str, state: str, event: str) -> str | None:
    """The state after ``event``, or None when ``event`` is illegal in ``state``."""
    return TRANSITIONS[(machine, state)].get(event)


# Read off the table once, for the per-frame hot path (no call per frame):
#: Methods a channel row names; any other method is the input METHOD.
NAMED_CHANNEL_METHODS = frozenset(i for (m, _), row in TRANSITIONS.items() if m == CHANNEL
                                  for i in row if "." in i)
#: Connection states in which a channel frame may arrive.
CHANNEL_FRAME_STATES = frozenset(s for s in CONNECTION_STATES
                                 if advance(CONNECTION, s, CHANNEL_FRAME) is not None)
#: An idle channel's row (a method it does not name keeps the channel idle).
IDLE_ROW = TRANSITIONS[(CHANNEL, IDLE)]
#: Where content assembly goes after the header, and after the last body frame.
AFTER_HEADER = TRANSITIONS[(CHANNEL, AWAIT_CONTENT_HEADER)][HEADER]
AFTER_LAST_BODY = TRANSITIONS[(CHANNEL, AWAIT_CONTENT_BODY)][LAST_BODY]

MODE_ERRORS: dict[tuple[str, str], str] = {
    (TRANSACTIONS, "Confirm.Select"): "cannot switch from tx to confirm mode",
    (CONFIRMS, "Tx.Select"): "cannot switch from confirm to tx mode",
    (PLAIN, "Tx.Commit"): "channel is not transactional",
    (PLAIN, "Tx.Rollback"): "channel is not transactional",
    (CONFIRMS, "Tx.Commit"): "channel is not transactional",
    (CONFIRMS, "Tx.Rollback"): "channel is not transactional",
}
