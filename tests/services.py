"""The machine's shared services for tests that compare tidings with the real thing.

A test needing one skips with the reason when it is not running, and fails instead when
``TIDINGS_REQUIRE_SERVICES=1`` (CI sets it). Tests never restart or reconfigure these.
"""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest

RABBITMQ = ("127.0.0.1", int(os.environ.get("TIDINGS_RABBITMQ_PORT", "5672")))
NATS = ("127.0.0.1", int(os.environ.get("TIDINGS_NATS_PORT", "4222")))
REDIS = ("127.0.0.1", int(os.environ.get("TIDINGS_REDIS_PORT", "6379")))


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it where services are required (CI)."""
    if os.environ.get("TIDINGS_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def require(name: str, address: tuple[str, int]) -> tuple[str, int]:
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as e:
        unavailable(f"{name} is not running on {address[0]}:{address[1]} ({e.strerror or e})")
    return address


def rabbitmq_port() -> int:
    return require("RabbitMQ", RABBITMQ)[1]


def rabbitmq_url() -> str:
    """The machine's RabbitMQ for the tidings client, with a patient handshake: a machine
    slowed by other work has kept RabbitMQ's AMQP handshake past the default 10 s."""
    return f"amqp://guest:guest@127.0.0.1:{rabbitmq_port()}/?connect_timeout=30"


def nats_url() -> str:
    host, port = require("NATS (with JetStream)", NATS)
    return f"nats://{host}:{port}"


def redis_url() -> str:
    host, port = require("Redis", REDIS)
    return f"redis://{host}:{port}/0"
