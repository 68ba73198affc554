"""A real ``tidings serve`` (AMQP and HTTP on ephemeral ports) for the gateway tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..serverproc import ServerProcess, running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(Path(tmp_path_factory.mktemp("gateway")) / "data", "--sse-buffer-events",
                 "50", "--http-max-body-bytes", "65536") as proc:
        yield proc


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}",
                      auth=("guest", "guest"), timeout=10) as client:
        yield client
