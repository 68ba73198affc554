"""The errors Kafka requests are answered with: an error code and a message, never a closed
connection (those are :class:`~tidings.kafka.protocol.KafkaProtocolError`)."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

__all__ = ["GroupError", "TopicError"]


class KafkaError(Exception):
    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(message or code.name)
        self.code = code


class TopicError(KafkaError):
    """A topic or partition request answered with an error code."""


class GroupError(KafkaError):
    """A group request answered with an error code (and nothing else)."""
