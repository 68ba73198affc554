"""A bare Kafka protocol client for tests: requests written and responses read with kio,
on a plain socket, so a test controls every byte."""

from __future__ import annotations

import io
import socket
import struct
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.request_header.v1.header import RequestHeader as HeaderV1
from kio.schema.request_header.v2.header import RequestHeader as HeaderV2
from kio.serial import entity_reader, entity_writer


class RawKafka:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def send_frame(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)

    def frame(self, api_key: int, version: int, body: Any) -> bytes:
        """The request's bytes (without the size)."""
        self.correlation += 1
        schema = load_request_schema(api_key, version)
        out = io.BytesIO()
        header = HeaderV2 if schema.__flexible__ else HeaderV1
        entity_writer(header)(out, header(request_api_key=api_key, request_api_version=version,
                                          correlation_id=self.correlation, client_id="raw"))
        entity_writer(schema)(out, body)
        return out.getvalue()

    def read_frame(self) -> bytes:
        """The next response's bytes, or b"" when the server closed the connection."""
        head = self._read(4)
        if len(head) < 4:
            return b""
        (size,) = struct.unpack(">i", head)
        return self._read(size)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def request(self, api_key: int, version: int, body: Any) -> Any:
        self.send_frame(self.frame(api_key, version, body))
        data = self.read_frame()
        assert data, "the server closed the connection"
        schema = load_response_schema(api_key, version)
        (correlation,) = struct.unpack_from(">i", data)
        assert correlation == self.correlation
        at = 4
        if schema.__header_schema__.__flexible__:
            at += 1  # no tagged fields
        response, size = entity_reader(schema)(data, at)
        assert at + size == len(data)
        return response

    def closed(self) -> bool:
        self.sock.settimeout(10)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
