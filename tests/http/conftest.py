"""A real ``tidings serve`` (AMQP and HTTP on ephemeral ports) for the gateway tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..serverproc import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("gateway")) / "data",
                         "--sse-buffer-events", "50", "--http-max-body-bytes", "65536").start()
    yield proc
    proc.stop()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}",
                      auth=("guest", "guest"), timeout=10) as client:
        yield client
