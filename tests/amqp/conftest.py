"""A real ``tidings serve`` shared by the tests of one module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..serverproc import ServerProcess, running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(Path(tmp_path_factory.mktemp("server")) / "data") as proc:
        yield proc
