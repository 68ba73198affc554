"""What answers Kafka requests on one vhost: its topics, producers, fetches, consumer
groups and committed offsets, made by the listener when a connection first uses the vhost."""

from __future__ import annotations

from tidings.kafka.fetch import Fetching
from tidings.kafka.group_api import GroupRequests
from tidings.kafka.groups import Coordinator
from tidings.kafka.offsets import Offsets
from tidings.kafka.produce import Producing
from tidings.kafka.settings import KafkaSettings
from tidings.kafka.topics import Topics
from tidings.routing.front_door import FrontDoor

__all__ = ["KafkaVhost"]


class KafkaVhost:
    """What answers Kafka requests on one vhost: its topics, producers, fetches, groups and
    committed offsets."""

    def __init__(self, broker: FrontDoor, settings: KafkaSettings) -> None:
        self.topics = Topics(broker, settings)
        self.producing = Producing(broker, self.topics, settings)
        self.fetching = Fetching(broker, self.topics, settings)
        self.coordinator = Coordinator(settings)
        self.groups = GroupRequests(self.coordinator, settings)
        self.offsets = Offsets(broker, self.topics, self.coordinator, settings)
