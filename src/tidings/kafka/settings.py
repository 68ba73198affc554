"""What one Kafka listener is configured with: its vhost, what it advertises, its bounds."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MESSAGE_MAX_BYTES", "KafkaSettings"]

#: Kafka's message.max.bytes default: the largest record batch a producer may send.
DEFAULT_MESSAGE_MAX_BYTES = 1024 * 1024 + 12
#: Kafka's socket.request.max.bytes default.
DEFAULT_MAX_REQUEST_BYTES = 100 * 2**20


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
    #: Bytes of unfinished requests held over all connections (Kafka's
    #: ``queued.max.request.bytes``): past it, a connection sending more of one is closed.
    queued_max_request_bytes: int = 256 * 2**20
    #: A connection with nothing open and no request for this long is closed (Kafka's
    #: ``connections.max.idle.ms``).
    connections_max_idle_ms: int = 600_000
    #: Create a topic (1 partition) when a client asks for its metadata (Kafka's default).
    auto_create_topics: bool = True
    #: Every connection must log in with SASL (else one that does not is the anonymous
    #: user, guest, where guest may connect from).
    require_sasl: bool = False
    #: Consumer groups (Kafka's broker settings of the same names, and their defaults): the
    #: session timeouts a member may ask for, and how long a new group waits for more members
    #: before its first rebalance.
    group_min_session_timeout_ms: int = 6_000
    group_max_session_timeout_ms: int = 1_800_000
    group_initial_rebalance_delay_ms: int = 3_000
    #: Members one group may have (Kafka's ``group.max.size``), members of all groups, and the
    #: bytes of their subscriptions and assignments held at once (bounds a join flood).
    group_max_size: int = 1_000
    max_members: int = 10_000
    max_group_state_bytes: int = 64 * 1024 * 1024
    #: Longest committed offset metadata (Kafka's ``offset.metadata.max.bytes``).
    offset_metadata_max_bytes: int = 4_096
