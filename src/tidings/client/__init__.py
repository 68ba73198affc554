"""The Python client API: producers, consumers, queues, messages, events, handlers, the bus."""

from tidings.client.blocking import BlockingClient
from tidings.client.client import Client, ReceivedMessage
from tidings.client.streams import StreamReader, StreamRecord
from tidings.client.transport import Delivery, QueueSpec, StreamSpec, Transport

__all__ = [
    "BlockingClient",
    "Client",
    "Delivery",
    "QueueSpec",
    "ReceivedMessage",
    "StreamReader",
    "StreamRecord",
    "StreamSpec",
    "Transport",
]
