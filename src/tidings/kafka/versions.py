"""The Kafka APIs and versions tidings answers, and the schema classes for each.

The versions are those the real clients negotiate (librdkafka, aiokafka, kafka-python,
kafkajs): every non-flexible version of each API kio has a schema for, and the flexible
ones a client insists on (ApiVersions v3, InitProducerId v2-v4). Produce is advertised from
v0 although v0-v2 are refused with UNSUPPORTED_VERSION: librdkafka before 2.11.1 stops
compressing when a broker's Produce minimum is above 0. Transactions are not advertised.
"""

from __future__ import annotations

from kio.index import load_request_schema, load_response_schema
from kio.static.protocol import RequestPayload, ResponsePayload

__all__ = [
    "API_NAMES",
    "REFUSED_PRODUCE",
    "SUPPORTED",
    "request_class",
    "response_class",
    "supported",
]

PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP = 8, 9, 10, 11
HEARTBEAT, LEAVE_GROUP, SYNC_GROUP, DESCRIBE_GROUPS, LIST_GROUPS = 12, 13, 14, 15, 16
SASL_HANDSHAKE = 17
API_VERSIONS, CREATE_TOPICS, DELETE_TOPICS, INIT_PRODUCER_ID = 18, 19, 20, 22
DESCRIBE_CONFIGS, SASL_AUTHENTICATE, DELETE_GROUPS = 32, 36, 42
#: KIP-848's group protocol: not advertised; a request for it is refused with an error.
CONSUMER_GROUP_HEARTBEAT = 68

#: api key -> (lowest, highest) version answered.
SUPPORTED: dict[int, tuple[int, int]] = {
    PRODUCE: (0, 8),
    FETCH: (4, 11),
    LIST_OFFSETS: (1, 5),
    METADATA: (0, 8),
    API_VERSIONS: (0, 3),
    CREATE_TOPICS: (2, 4),
    DELETE_TOPICS: (1, 3),
    INIT_PRODUCER_ID: (0, 4),
    DESCRIBE_CONFIGS: (1, 3),
    OFFSET_COMMIT: (2, 7),
    OFFSET_FETCH: (1, 5),
    FIND_COORDINATOR: (0, 2),
    JOIN_GROUP: (0, 5),
    HEARTBEAT: (0, 3),
    LEAVE_GROUP: (0, 3),
    SYNC_GROUP: (0, 3),
    DESCRIBE_GROUPS: (0, 4),
    LIST_GROUPS: (0, 4),
    SASL_HANDSHAKE: (0, 1),
    SASL_AUTHENTICATE: (0, 1),
    DELETE_GROUPS: (0, 2),
}

#: Produce versions advertised but answered with UNSUPPORTED_VERSION (see the module doc).
REFUSED_PRODUCE = range(0, 3)

API_NAMES = {PRODUCE: "Produce", FETCH: "Fetch", LIST_OFFSETS: "ListOffsets",
             METADATA: "Metadata", API_VERSIONS: "ApiVersions", CREATE_TOPICS: "CreateTopics",
             DELETE_TOPICS: "DeleteTopics", INIT_PRODUCER_ID: "InitProducerId",
             DESCRIBE_CONFIGS: "DescribeConfigs", OFFSET_COMMIT: "OffsetCommit",
             OFFSET_FETCH: "OffsetFetch", FIND_COORDINATOR: "FindCoordinator",
             JOIN_GROUP: "JoinGroup", HEARTBEAT: "Heartbeat", LEAVE_GROUP: "LeaveGroup",
             SYNC_GROUP: "SyncGroup", DESCRIBE_GROUPS: "DescribeGroups",
             LIST_GROUPS: "ListGroups", SASL_HANDSHAKE: "SaslHandshake",
             SASL_AUTHENTICATE: "SaslAuthenticate", DELETE_GROUPS: "DeleteGroups",
             CONSUMER_GROUP_HEARTBEAT: "ConsumerGroupHeartbeat"}


def supported(api_key: int, version: int) -> bool:
    span = SUPPORTED.get(api_key)
    return span is not None and span[0] <= version <= span[1]


_requests: dict[tuple[int, int], type[RequestPayload]] = {}
_responses: dict[tuple[int, int], type[ResponsePayload]] = {}


def request_class(api_key: int, version: int) -> type[RequestPayload]:
    """kio's request type (Produce v0-v2 read as v3: the same fields but a transactional
    id, which the reader prepends as null)."""
    key = (api_key, max(version, 3) if api_key == PRODUCE else version)
    found = _requests.get(key)
    if found is None:
        found = _requests[key] = load_request_schema(*key)
    return found


def response_class(api_key: int, version: int) -> type[ResponsePayload]:
    key = (api_key, version)
    found = _responses.get(key)
    if found is None:
        found = _responses[key] = load_response_schema(*key)
    return found
