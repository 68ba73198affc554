"""Long-polling fetches on an idle partition leave nothing behind: each wait is dropped when
its fetch ends, so a consumer polling an empty topic for hours holds memory flat."""

from __future__ import annotations

import datetime

from kio.schema.fetch.v11 import request as fetch
from kio.schema.fetch.v11.response import FetchResponse

from tidings.kafka.access import Access
from tidings.kafka.fetch import Fetching
from tidings.kafka.settings import KafkaSettings
from tidings.kafka.topics import Topics
from tidings.routing.broker import Broker
from tidings.routing.stream import StreamQueue


async def test_abandoned_waits_do_not_pile_up(broker: Broker) -> None:
    settings = KafkaSettings("127.0.0.1", 9092)
    topics = Topics(broker, settings)
    topics.create("idle", 1, {})
    fetching = Fetching(broker, topics, settings)
    request = fetch.FetchRequest(
        replica_id=-1, max_wait=datetime.timedelta(milliseconds=1), min_bytes=1,
        max_bytes=1 << 20, isolation_level=0, session_id=0, session_epoch=-1, topics=(
            fetch.FetchTopic(topic="idle", partitions=(fetch.FetchPartition(
                partition=0, current_leader_epoch=-1, fetch_offset=0, log_start_offset=-1,
                partition_max_bytes=1 << 20),)),), forgotten_topics_data=(), rack_id="")
    for _ in range(300):
        response = await fetching.fetch(request, FetchResponse, Access(None, "/"))
        assert response.responses[0].partitions[0].records == b""
    queue = broker.vhosts.get_queue("/", "idle")
    assert isinstance(queue, StreamQueue)
    assert len(queue._waiters) <= 64
