"""Durable bytes: the :class:`Store` contract and its two implementations."""

from tidings.storage.base import Store
from tidings.storage.memory import MemoryStore
from tidings.storage.sqlite import SqliteStore

__all__ = ["MemoryStore", "SqliteStore", "Store"]
