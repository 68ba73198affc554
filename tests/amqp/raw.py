"""A minimal hand-driven AMQP client for tests: the handshake, then frames of our choosing."""

from __future__ import annotations

import socket
import struct

from pamqp import commands, frame

from tidings.amqp.frames import PROTOCOL_HEADER, FrameReader

C = commands.Connection
_FRAME_HEAD = struct.Struct(">BHI")


class RawClient:
    """A minimal hand-driven AMQP client: handshake, then frames of our choosing."""

    def __init__(self, port: int, heartbeat_s: int, *, host: str = "127.0.0.1",
                 user: str = "guest", password: str = "guest") -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.reader = FrameReader()
        self.sock.sendall(PROTOCOL_HEADER)
        self.expect(C.Start)
        self.send(0, C.StartOk({}, "PLAIN", f"\x00{user}\x00{password}"))
        tune = self.expect(C.Tune)
        self.send(0, C.TuneOk(tune.channel_max, tune.frame_max, heartbeat_s))  # type: ignore[attr-defined]
        self.send(0, C.Open("/"))
        self.expect(C.OpenOk)

    def send(self, channel: int, value: object) -> None:
        self.sock.sendall(frame.marshal(value, channel))  # type: ignore[arg-type]

    def send_body(self, channel: int, data: bytes) -> None:
        self.sock.sendall(_FRAME_HEAD.pack(3, channel, len(data)) + data + b"\xce")

    def open_channel(self, channel: int) -> None:
        self.send(channel, commands.Channel.Open())
        self.expect(commands.Channel.OpenOk)

    def expect(self, kind: type) -> object:
        while True:
            item = self.reader.next_frame()
            if item is not None:
                if isinstance(item[1], kind):
                    return item[1]
                continue
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.reader.feed(data)
