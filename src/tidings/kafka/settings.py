"""What one Kafka listener is configured with: its vhost, what it advertises, its bounds."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from tidings.kafka.protocol import DEFAULT_MAX_REQUEST_BYTES

__all__ = ["KafkaSettings", "make", "nested"]

#: Kafka's message.max.bytes default: the largest record batch a producer may send.
DEFAULT_MESSAGE_MAX_BYTES = 1024 * 1024 + 12


@dataclass(slots=True)
class KafkaSettings:
    #: Where clients are told to connect (Metadata); a port of 0 becomes the bound one.
    host: str
    port: int
    vhost: str = "/"
    #: The one broker's id (also the controller's and every partition's leader).
    node_id: int = 1
    cluster_id: str = "tidings"
    message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    #: Partitions one topic may have, and topics (or partitions) one request may name.
    max_partitions: int = 256
    max_topics_per_request: int = 1000
    #: Create a topic (1 partition) when a client asks for its metadata (Kafka's default).
    auto_create_topics: bool = True


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
