"""A real ``tidings serve`` with its Kafka listener, shared by the tests of one module, and the
Kafka clients the tests drive (each skips with the reason when missing; CI requires them)."""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from ..serverproc import ServerProcess, running
from ..services import unavailable

JS = Path(__file__).parent / "js"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running(Path(tmp_path_factory.mktemp("kafka")) / "data", "--kafka-port", "0",
                 "--http-port", "-1") as proc:
        yield proc


@pytest.fixture(scope="module")
def bootstrap(server: ServerProcess) -> str:
    return f"127.0.0.1:{server.kafka_port}"


def client_library(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        unavailable(f"the Kafka client {name} is not installed (pip install -e '.[test]'): {e}")


def kcat() -> str:
    found = shutil.which("kcat") or shutil.which("kafkacat")
    if found is None:
        unavailable("kcat is not installed (apt-get install kcat)")
    return found


def kafkajs() -> Path:
    if shutil.which("node") is None:
        unavailable("Node.js is not installed (kafkajs runs on it)")
    if not (JS / "node_modules" / "kafkajs").is_dir():
        unavailable(f"kafkajs is not installed (npm install --prefix {JS})")
    return JS
