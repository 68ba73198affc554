"""tidings: a message queue and event bus for Python, embedded and durable by default.

    async with tidings.connect("./data") as client:
        await client.send("jobs", {"id": 1})
"""

from tidings.client import BlockingClient, Client, ReceivedMessage, StreamRecord
from tidings.client.machine import Event, Machine, Output
from tidings.client.tasks import TaskError, TaskHandle
from tidings.errors import (
    AccessRefusedError,
    BrokenResourceError,
    ClosedResourceError,
    ConfigError,
    InvalidArgumentError,
    NotAllowedError,
    NotFoundError,
    NotSupportedError,
    PreconditionFailedError,
    ResourceLockedError,
    TidingsError,
)
from tidings.message import Message
from tidings.urls import connect, connect_blocking

__version__ = "0.1.0"

__all__ = [
    "AccessRefusedError",
    "BlockingClient",
    "BrokenResourceError",
    "Client",
    "ClosedResourceError",
    "ConfigError",
    "Event",
    "InvalidArgumentError",
    "Machine",
    "Message",
    "NotAllowedError",
    "NotFoundError",
    "NotSupportedError",
    "Output",
    "PreconditionFailedError",
    "ReceivedMessage",
    "ResourceLockedError",
    "StreamRecord",
    "TaskError",
    "TaskHandle",
    "TidingsError",
    "connect",
    "connect_blocking",
]
