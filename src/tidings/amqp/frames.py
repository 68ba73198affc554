"""Bytes ⇄ frames: a buffer that yields whole frames and never half-parses one.

``FrameReader.feed(data)`` appends; ``next_frame()`` returns ``(channel, frame)`` when a whole
frame is buffered, ``None`` when more bytes are needed, and raises ``FrameError`` (501) when the
bytes cannot be a frame: a bad frame-end octet, an unknown type, a frame above the negotiated
frame-max, or a method pamqp cannot decode. The protocol header (``AMQP\\x00\\x00\\x09\\x01``) is
read first, by ``read_protocol_header``.
"""

from __future__ import annotations

import contextlib
import datetime
import struct
from collections.abc import Iterator

from pamqp import body, commands, constants, frame, heartbeat
from pamqp import decode as pamqp_decode
from pamqp.base import Frame as Method

from tidings.amqp import codec
from tidings.errors import FrameError, ProtocolHeaderMismatch

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
_FRAME_HEAD = struct.Struct(">BHI")
#: Frame header (7) + frame end (1).
FRAME_OVERHEAD = 8

AnyFrame = Method | codec.ContentHeader | body.ContentBody | heartbeat.Heartbeat


class FrameReader:
    def __init__(self, frame_max: int = constants.FRAME_MAX_SIZE) -> None:
        self._buffer = bytearray()
        self.frame_max = frame_max

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def buffered(self) -> int:
        return len(self._buffer)

    def read_protocol_header(self) -> bool:
        """True once the protocol header is consumed; raises on any other opening."""
        if len(self._buffer) < len(PROTOCOL_HEADER):
            if not PROTOCOL_HEADER.startswith(bytes(self._buffer)):
                raise ProtocolHeaderMismatch("the peer did not send the AMQP 0-9-1 header")
            return False
        if self._buffer[:8] != PROTOCOL_HEADER:
            raise ProtocolHeaderMismatch("the peer did not send the AMQP 0-9-1 header")
        del self._buffer[:8]
        return True

    def next_frame(self) -> tuple[int, AnyFrame] | None:
        buf = self._buffer
        if len(buf) < 7:
            return None
        frame_type, channel, size = _FRAME_HEAD.unpack_from(buf)
        if size + FRAME_OVERHEAD > self.frame_max:
            raise FrameError(f"frame size {size} exceeds the negotiated frame-max "
                             f"{self.frame_max}")
        end = 7 + size
        if len(buf) < end + 1:
            return None
        if buf[end] != constants.FRAME_END:
            raise FrameError(f"frame end octet is {buf[end]:#x}, expected 0xce")
        if frame_type == constants.FRAME_BODY:  # the hot path: no copy through pamqp
            value: AnyFrame = body.ContentBody(bytes(buf[7:end]))
        elif frame_type == constants.FRAME_HEARTBEAT:
            value = heartbeat.Heartbeat()
        elif frame_type in (constants.FRAME_METHOD, constants.FRAME_HEADER):
            try:
                raw = bytes(buf[: end + 1])
                if frame_type == constants.FRAME_HEADER:
                    value = codec.decode_content_header(raw)
                elif (method := codec.decode_method(raw)) is not None:
                    value = method
                else:
                    with _timestamps_in_seconds():
                        _, channel, value = frame.unmarshal(raw)
            except RecursionError as e:
                raise FrameError(f"cannot decode frame on channel {channel}: field tables "
                                 f"nested too deeply") from e
            except Exception as e:  # pamqp may raise anything on bytes it was not made for
                raise FrameError(f"cannot decode frame on channel {channel}: "
                                 f"{type(e).__name__}: {str(e)[:80]}") from e
        else:
            raise FrameError(f"unknown frame type {frame_type}")
        del buf[: end + 1]
        return channel, value


def _timestamp_in_seconds(value: bytes) -> tuple[int, datetime.datetime]:
    """An AMQP timestamp as RabbitMQ reads it: seconds, whatever the size (pamqp takes values
    past 2106 for milliseconds: an ``x-stream-offset`` in the year 9999 became 1978 and a
    stream consumer started at its first record). Past datetime's range: its end."""
    seconds = int.from_bytes(value[:8], "big")
    try:
        return 8, datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, ValueError, OSError):
        return 8, datetime.datetime.max.replace(tzinfo=datetime.UTC)


@contextlib.contextmanager
def _timestamps_in_seconds() -> Iterator[None]:
    """pamqp's field-table decoding with :func:`_timestamp_in_seconds`, for one frame (a
    synchronous call: nothing else decodes on this thread meanwhile)."""
    mapping = pamqp_decode.TABLE_MAPPING
    before = mapping[b"T"]
    mapping[b"T"] = _timestamp_in_seconds
    try:
        yield
    finally:
        mapping[b"T"] = before


def any_utf8_names(cls: type[Method]) -> type[Method]:
    """``cls`` without pamqp's name check: pamqp allows only ``[a-zA-Z0-9-_.:@#,/+ ]`` in the
    exchange and queue names it sends, RabbitMQ (and tidings) any UTF-8 of up to 255 bytes.
    Same wire form (the index and marshalling are inherited); received frames never go
    through these."""

    def validate(self: Method) -> None:
        for attr in ("exchange", "queue"):
            value = getattr(self, attr, None)
            if value is not None and len(value.encode()) > 255:
                raise ValueError(f"{attr} is longer than 255 bytes")

    return type(cls.__name__, (cls,), {"validate": validate,  # fields: the parent's __slots__
                                       "__qualname__": cls.__qualname__})


#: The methods tidings sends with user-chosen exchange or queue names.
DeclareOk = any_utf8_names(commands.Queue.DeclareOk)
GetOk = any_utf8_names(commands.Basic.GetOk)
Return = any_utf8_names(commands.Basic.Return)


def encode_method(channel: int, method: Method) -> bytes:
    return frame.marshal(method, channel)


HEARTBEAT_FRAME = heartbeat.Heartbeat().marshal()
