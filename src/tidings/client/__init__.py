"""The Python client API: producers, consumers, queues, messages, events, handlers, the bus."""

from tidings.client.blocking import BlockingClient, connect_blocking
from tidings.client.client import Client, ReceivedMessage, connect
from tidings.client.transport import Delivery, QueueSpec, Transport

__all__ = [
    "BlockingClient",
    "Client",
    "Delivery",
    "QueueSpec",
    "ReceivedMessage",
    "Transport",
    "connect",
    "connect_blocking",
]
