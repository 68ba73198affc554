"""The errors Kafka requests are answered with: an error code and a message, never a closed
connection (those are :class:`~tidings.kafka.protocol.KafkaProtocolError`)."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from tidings.errors import TidingsError

__all__ = ["GroupError", "KafkaError", "TopicError"]


class KafkaError(TidingsError):
    """An answer with Kafka's ``error_code`` (the class's ``code`` stays tidings' own)."""

    def __init__(self, error_code: ErrorCode, message: str = "") -> None:
        super().__init__(message or error_code.name)
        self.error_code = error_code


class TopicError(KafkaError):
    """A topic or partition request answered with an error code."""


class GroupError(KafkaError):
    """A group request answered with an error code (and nothing else)."""
