"""The Kafka wire protocol, sans-IO (h11's shape, as :mod:`tidings.amqp.connection`):
:meth:`KafkaConnection.receive_data` takes bytes and returns whole requests;
:meth:`KafkaConnection.response` turns a response into bytes. No sockets, no broker.

A request is ``size (4) | header | body``. The header says the API, its version and the
correlation id the response must carry; kio reads the header and the body from Kafka's own
schemas. What the connection refuses:

- a size above ``max_request_bytes`` (Kafka's ``socket.request.max.bytes``), or below a
  header's: :class:`KafkaProtocolError` (the driver closes the connection, as Kafka does);
- an API or version that is not answered (:mod:`tidings.kafka.versions`): ApiVersions at any
  version gets error 35 (UNSUPPORTED_VERSION) in the v0 layout, which every client can read
  (Kafka's own rule); anything else is a :class:`KafkaProtocolError` naming the API;
- a body that does not parse whole (trailing bytes included): :class:`KafkaProtocolError`.

:func:`make` and :func:`nested` build kio's response entities, whose fields differ from one
version to the next, so that one builder per API serves all its versions.
"""

from __future__ import annotations

import io
import struct
import sys
from dataclasses import dataclass
from typing import Any

from kio.schema.api_versions.v0.response import ApiVersion, ApiVersionsResponse
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.schema.response_header.v0.header import ResponseHeader as ResponseHeaderV0
from kio.serial import entity_reader, entity_writer

from tidings.errors import RemoteProtocolError
from tidings.kafka.frame_check import check_counts
from tidings.kafka.settings import DEFAULT_MAX_REQUEST_BYTES
from tidings.kafka.versions import (
    API_NAMES,
    API_VERSIONS,
    CONSUMER_GROUP_HEARTBEAT,
    PRODUCE,
    REFUSED_PRODUCE,
    SASL_AUTHENTICATE,
    SUPPORTED,
    request_class,
    response_class,
    supported,
)

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "RAW_SASL", "KafkaConnection", "KafkaProtocolError",
           "KafkaRequest", "make", "nested"]

_SIZE = struct.Struct(">i")
#: The version of a bare SASL token (after SaslHandshake v0) read as a SaslAuthenticate.
RAW_SASL = -1
_HEAD = struct.Struct(">hhi")  # api key, api version, correlation id

_read_header_v1 = entity_reader(RequestHeaderV1)
_read_header_v2 = entity_reader(RequestHeaderV2)
_write_header_v0 = entity_writer(ResponseHeaderV0)


class KafkaProtocolError(RemoteProtocolError):
    """Bytes that are not a request tidings answers: the connection closes."""


@dataclass(slots=True)
class KafkaRequest:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    #: kio's request entity, or None when the version is refused (see ``refused``).
    body: Any
    #: Why the request is answered with an error only (an unsupported version).
    refused: str | None = None

    @property
    def name(self) -> str:
        return f"{API_NAMES.get(self.api_key, f'api {self.api_key}')} v{self.api_version}"


def api_versions_refusal() -> ApiVersionsResponse:
    """ApiVersions' answer to a version it does not know: error 35 and the supported APIs,
    in the v0 layout."""
    return ApiVersionsResponse(error_code=ErrorCode.unsupported_version, api_keys=tuple(
        ApiVersion(api_key=k, min_version=lo, max_version=hi)
        for k, (lo, hi) in sorted(SUPPORTED.items())))


class KafkaConnection:
    """One client connection's protocol state: the bytes not yet a whole request."""

    def __init__(self, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        self.max_request_bytes = max_request_bytes
        self._buffer = bytearray()
        self._writers: dict[type, Any] = {}
        self._readers: dict[type, Any] = {}
        #: After a SaslHandshake v0 the next frame is a bare SASL token, not a request.
        self.raw_sasl = False

    @property
    def buffered(self) -> int:
        """Bytes received that are not a whole request yet."""
        return len(self._buffer)

    def discard(self) -> None:
        """Forget the unfinished request (the connection is gone)."""
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> list[KafkaRequest]:
        """Whole requests in ``data`` (and what came before it)."""
        buffer = self._buffer
        buffer += data
        out = []
        while len(buffer) >= 4:
            (size,) = _SIZE.unpack_from(buffer)
            if size < (0 if self.raw_sasl else _HEAD.size) or size > self.max_request_bytes:
                raise KafkaProtocolError(
                    f"request of {size} bytes (the limit is {self.max_request_bytes})")
            if len(buffer) < 4 + size:
                break
            frame = bytes(buffer[4:4 + size])
            del buffer[:4 + size]
            if self.raw_sasl:
                self.raw_sasl = False
                out.append(KafkaRequest(SASL_AUTHENTICATE, RAW_SASL, 0, None, frame))
                continue
            out.append(self._parse(frame))
        return out

    def _parse(self, frame: bytes) -> KafkaRequest:
        api_key, version, correlation_id = _HEAD.unpack_from(frame)
        refused = None
        if api_key == CONSUMER_GROUP_HEARTBEAT and version in (0, 1):
            refused = ("the consumer group protocol of KIP-848 is not supported: use the "
                       "classic one (group.protocol=classic)")
        elif not supported(api_key, version):
            if api_key == API_VERSIONS:
                return KafkaRequest(api_key, version, correlation_id, None, None,
                                    f"ApiVersions v{version} is not supported")
            raise KafkaProtocolError(
                f"{API_NAMES.get(api_key, f'API key {api_key}')} v{version} is not supported "
                f"(see ApiVersions)")
        schema = request_class(api_key, version)
        flexible = schema.__flexible__
        try:
            header, at = (_read_header_v2 if flexible else _read_header_v1)(frame, 0)
            if api_key == PRODUCE and version in REFUSED_PRODUCE:  # read as v3: a null id
                frame = frame[:at] + b"\xff\xff" + frame[at:]
            check_counts(schema, frame, at)  # (before kio makes room for what it announces)
            reader = self._readers.get(schema)
            if reader is None:
                reader = self._readers[schema] = entity_reader(schema)
            body, size = reader(frame, at)
        except Exception as e:  # kio raises several kinds for malformed input: one error
            raise KafkaProtocolError(f"malformed {API_NAMES[api_key]} v{version} request: "
                                     f"{type(e).__name__}: {e}") from None
        if at + size != len(frame):
            raise KafkaProtocolError(f"{API_NAMES[api_key]} v{version} request has "
                                     f"{len(frame) - at - size} trailing bytes")
        if api_key == PRODUCE and version in REFUSED_PRODUCE:
            refused = f"Produce v{version} is not supported"
        return KafkaRequest(api_key, version, correlation_id, header.client_id, body, refused)

    def response(self, request: KafkaRequest, body: Any) -> bytes:
        """The response frame for ``request``: ``body`` is kio's response entity (or, for a
        refused Produce v0-v2, bytes already in that version's layout)."""
        out = io.BytesIO()
        out.write(b"\0\0\0\0")
        if request.api_version == RAW_SASL:
            out.write(body)
        elif isinstance(body, bytes):
            _write_header_v0(out, ResponseHeaderV0(correlation_id=request.correlation_id))
            out.write(body)
        else:
            schema = type(body)
            header_schema = schema.__header_schema__
            header_writer = self._writers.get(header_schema)
            if header_writer is None:
                header_writer = self._writers[header_schema] = entity_writer(header_schema)
            header_writer(out, header_schema(correlation_id=request.correlation_id))
            writer = self._writers.get(schema)
            if writer is None:
                writer = self._writers[schema] = entity_writer(schema)
            writer(out, body)
        data = out.getbuffer()
        _SIZE.pack_into(data, 0, len(data) - 4)
        return bytes(data)


def response_schema(request: KafkaRequest) -> Any:
    """kio's response type for the request's API and version."""
    return response_class(request.api_key, request.api_version)


def produce_refusal(request: KafkaRequest) -> bytes:
    """A Produce v0-v2 answer: UNSUPPORTED_VERSION for every partition, in its layout."""
    version = request.api_version
    out = [_SIZE.pack(len(request.body.topic_data))]
    for topic in request.body.topic_data:
        name = topic.name.encode()
        out.append(struct.pack(">h", len(name)) + name + _SIZE.pack(len(topic.partition_data)))
        for partition in topic.partition_data:
            out.append(struct.pack(">ihq", partition.index, ErrorCode.unsupported_version.value,
                                   -1))
            if version >= 2:
                out.append(struct.pack(">q", -1))
    if version >= 1:
        out.append(_SIZE.pack(0))
    return b"".join(out)


_fields: dict[type, frozenset[str]] = {}


def make(cls: type, **values: Any) -> Any:
    """An entity of kio's ``cls`` from ``values``, leaving out the fields its version lacks
    (one builder serves every version of a response)."""
    names = _fields.get(cls)
    if names is None:
        names = _fields[cls] = frozenset(cls.__dataclass_fields__)
    return cls(**{k: v for k, v in values.items() if k in names})


def nested(cls: type, name: str) -> type:
    """The entity type ``name`` defined beside kio's response type ``cls``."""
    found = getattr(sys.modules[cls.__module__], name)
    assert isinstance(found, type)
    return found
