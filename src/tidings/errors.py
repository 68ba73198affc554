"""The one exception tree of tidings.

Every error a user can meet is a :class:`TidingsError`. Each class carries the AMQP 0-9-1
reply code and the HTTP status the faces answer with, so the AMQP server and the HTTP gateway
map errors from this table instead of keeping their own. Messages name the thing and the rule,
as RabbitMQ's do: ``no queue 'orders' in vhost '/'``.

Protocol errors follow h11's split: :class:`RemoteProtocolError` and its subclasses are the
peer's fault (bytes or methods the protocol forbids), answered with a close carrying the
class's reply code; :class:`LocalProtocolError` is ours (tidings asked its own protocol core
for something the state forbids: a bug).
"""

from __future__ import annotations

from typing import Any


class TidingsError(Exception):
    """Base of every tidings error."""

    #: AMQP reply code (0-9-1 §1.9 constants); 541 INTERNAL_ERROR when nothing better fits.
    reply_code: int = 541
    #: HTTP status the gateway answers with.
    status: int = 500
    #: Stable machine-readable code for JSON bodies.
    code: str = "internal_error"
    #: True when the error closes the whole connection rather than one channel.
    closes_connection: bool = False


class NotFoundError(TidingsError):
    """A queue, exchange, message or other named thing does not exist."""

    reply_code, status, code = 404, 404, "not_found"


class PreconditionFailedError(TidingsError):
    """A request contradicts existing state (inequivalent redeclare, queue in use, timeout)."""

    reply_code, status, code = 406, 409, "precondition_failed"


class VersionConflictError(PreconditionFailedError):
    """A state machine's transition was computed from an instance's version that is no
    longer current (another process or an operator moved it on): read it and apply again."""

    code = "version_conflict"


class AccessRefusedError(TidingsError):
    """The caller may not do this (reserved names, permissions, wrong password)."""

    reply_code, status, code = 403, 403, "access_refused"


class ResourceLockedError(TidingsError):
    """Someone else holds the thing exclusively (exclusive queue, data directory in use)."""

    reply_code, status, code = 405, 423, "resource_locked"


class NotAllowedError(TidingsError):
    """The operation is not allowed in this state (e.g. binding to the default exchange)."""

    reply_code, status, code = 530, 405, "not_allowed"
    closes_connection = True


class CommandInvalidError(TidingsError):
    """A request names something that cannot exist (e.g. an unknown exchange type)."""

    reply_code, status, code = 503, 400, "command_invalid"
    closes_connection = True


class InvalidArgumentError(TidingsError):
    """An argument has the wrong type or value (queue arguments, TTLs, priorities)."""

    reply_code, status, code = 406, 400, "invalid_argument"


class ClosedResourceError(TidingsError):
    """Raised when *your* code uses a client, broker or store after closing it."""

    reply_code, status, code = 504, 409, "closed"


class BrokenResourceError(TidingsError):
    """The other side went away (server down, child process died); the cause is in __cause__."""

    reply_code, status, code = 320, 503, "broken"


class ConnectionForcedError(TidingsError):
    """An operator closed the connection (RabbitMQ's CONNECTION_FORCED)."""

    reply_code, status, code = 320, 503, "connection_forced"


class InternalError(TidingsError):
    """Something went wrong inside tidings (a bug); the connection that met it is closed."""

    reply_code, status, code = 541, 500, "internal_error"
    closes_connection = True


class ConfigError(TidingsError):
    """Configuration given to tidings is invalid (bad URL, bad flag, bad data directory)."""

    reply_code, status, code = 541, 400, "config_error"


class NotSupportedError(TidingsError):
    """The broker behind a transport cannot do this; the message names the broker, the
    operation and what to use instead (never a silent no-op)."""

    reply_code, status, code = 540, 501, "not_supported"

    def __init__(self, broker: str, operation: str, alternative: str) -> None:
        super().__init__(f"{broker} cannot {operation}: {alternative}")
        self.broker, self.operation, self.alternative = broker, operation, alternative


class QueueTypeError(TidingsError):
    """The queue's type does not do this (``basic.get`` or purge on a stream, a consumer
    without acknowledgements on one): RabbitMQ's NOT_IMPLEMENTED."""

    reply_code, status, code = 540, 405, "not_implemented"


class RemoteProtocolError(TidingsError):
    """The peer broke the wire protocol; the connection is closed with ``reply_code``.

    ``method`` is the AMQP method class that was refused, when there is one (its class and
    method ids go into the close)."""

    reply_code, status, code = 505, 400, "protocol_error"
    closes_connection = True

    def __init__(self, message: str, *, method: Any = None) -> None:
        super().__init__(message)
        self.method = method


class FrameError(RemoteProtocolError):
    """Bytes that are not a valid frame (AMQP 501 FRAME_ERROR)."""

    reply_code, code = 501, "frame_error"


class ProtocolHeaderMismatch(FrameError):
    """The peer opened with something other than the AMQP 0-9-1 protocol header."""

    code = "protocol_header"


class FrameSyntaxError(RemoteProtocolError):
    """A frame whose fields are malformed (AMQP 502 SYNTAX_ERROR)."""

    reply_code, code = 502, "syntax_error"


class UnexpectedMethodError(RemoteProtocolError):
    """A method that is not legal in the current state (AMQP 503 COMMAND_INVALID)."""

    reply_code, code = 503, "command_invalid"


class ChannelError(RemoteProtocolError):
    """A channel used before it is open, or opened twice (AMQP 504 CHANNEL_ERROR)."""

    reply_code, code = 504, "channel_error"


class UnexpectedFrameError(RemoteProtocolError):
    """A frame out of order, e.g. during content assembly (AMQP 505 UNEXPECTED_FRAME)."""

    reply_code, code = 505, "unexpected_frame"


class NotImplementedByServerError(RemoteProtocolError):
    """A method or flag tidings (like RabbitMQ) does not implement (AMQP 540)."""

    reply_code, status, code = 540, 501, "not_implemented"


class LocalProtocolError(InternalError):
    """tidings asked its protocol core for something the current state forbids (a bug)."""

    code = "local_protocol_error"
