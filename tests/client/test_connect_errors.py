"""tidings.connect never hangs and says what went wrong: a port that accepts TCP but never
speaks (or speaks another protocol) times out with a clear error, URL options that do not
apply are refused, an unknown vhost and a bad Redis database are named."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

import tidings
from tidings.errors import AccessRefusedError, BrokenResourceError, ConfigError, NotFoundError

from ..services import rabbitmq_port, redis_url


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


async def _connect(url: str) -> None:
    async with tidings.connect(url):
        pass


@pytest.mark.parametrize("scheme", ["amqp://guest:guest@", "redis://"])
async def test_a_port_that_never_speaks_times_out_with_a_clear_error(
        silent_port: int, scheme: str) -> None:
    started = time.monotonic()
    with pytest.raises(BrokenResourceError, match=r"within 1\.5 s"):
        await asyncio.wait_for(
            _connect(f"{scheme}127.0.0.1:{silent_port}/?connect_timeout=1.5"), 30)
    assert time.monotonic() - started < 10


async def test_an_amqp_url_to_a_redis_port_is_not_an_amqp_broker() -> None:
    port = int(redis_url().rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(BrokenResourceError):
        await asyncio.wait_for(_connect(f"amqp://guest:guest@127.0.0.1:{port}/"
                                        f"?connect_timeout=2"), 30)


@pytest.mark.parametrize(("url", "says"), [
    ("amqp://guest:guest@127.0.0.1:{rabbit}/?cafile=/tmp/ca.pem", "applies to amqps://"),
    ("amqp://guest:guest@127.0.0.1:{rabbit}/?bogus=1", "option 'bogus'"),
    ("amqp://guest:guest@127.0.0.1:{rabbit}/?connect_timeout=soon", "connect_timeout=soon"),
    ("{redis}?cafile=/tmp/ca.pem", "applies to rediss://"),
    ("redis://127.0.0.1:6379/abc", "not a Redis database number"),
])
async def test_url_options_that_do_not_apply_are_errors(url: str, says: str) -> None:
    url = url.format(rabbit=rabbitmq_port(), redis=redis_url())
    with pytest.raises(ConfigError, match=says):
        await _connect(url)


async def test_an_unknown_vhost_and_a_wrong_password_say_so() -> None:
    with pytest.raises(NotFoundError, match="refused to open vhost 'no-such-vhost'"):
        await _connect(f"amqp://guest:guest@127.0.0.1:{rabbitmq_port()}/no-such-vhost")
    with pytest.raises(AccessRefusedError):
        await _connect(f"amqp://guest:wrong@127.0.0.1:{rabbitmq_port()}/")


async def test_a_redis_database_beyond_the_servers_is_a_config_error() -> None:
    base = redis_url().rsplit("/", 1)[0]  # redis://host:port
    with pytest.raises(ConfigError, match="DB index is out of range"):
        await _connect(f"{base}/9999")
