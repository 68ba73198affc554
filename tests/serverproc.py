"""Run a real ``tidings serve`` process on an ephemeral port, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def running(data_dir: Path, *extra: str) -> Iterator[ServerProcess]:
    """A started server, stopped when the block ends (a module fixture's whole life)."""
    proc = ServerProcess(data_dir, *extra).start()
    try:
        yield proc
    finally:
        proc.stop()


class ServerProcess:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir, self.extra = data_dir, extra
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.tls_port = 0
        self.http_port = 0
        self.metrics_port = 0
        self.kafka_port = self.kafka_tls_port = 0
        #: What the server printed at start.
        self.banner: list[str] = []
        self.log = data_dir.parent / f"{data_dir.name}-server.log"
        data_dir.parent.mkdir(parents=True, exist_ok=True)

    def start(self, port: int = 0) -> ServerProcess:
        self.port = self.tls_port = self.http_port = self.metrics_port = 0  # (a restart)
        self.kafka_port = self.kafka_tls_port = 0
        http = [] if "--http-port" in self.extra else ["--http-port", "0"]  # never 15672
        args = [sys.executable, "-m", "tidings", "--data-dir", str(self.data_dir), "serve",
                "--host", "127.0.0.1", "--amqp-port", str(port), *http, *self.extra]
        want_http = "-1" not in [self.extra[i + 1] for i, a in enumerate(self.extra[:-1])
                                 if a == "--http-port"]
        stderr = open(self.log, "a")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        stderr.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            self.banner.append(line)
            if not line:
                self.proc.wait(timeout=30)
                self.proc.stdout.close()
                raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")
            found = re.search(r"(amqps?|https?|kafka\+tls|kafka) listening on [^:]+:(\d+)",
                              line)
            if found and "metrics at /metrics" in line:
                self.metrics_port = int(found.group(2))
            elif found and found.group(1) == "amqp":
                self.port = int(found.group(2))
            elif found and found.group(1) == "kafka":
                self.kafka_port = int(found.group(2))
            elif found and found.group(1) == "kafka+tls":
                self.kafka_tls_port = int(found.group(2))
            elif found and found.group(1).startswith("http"):
                self.http_port = int(found.group(2))
            elif found:
                self.tls_port = int(found.group(2))
            if self.port and (self.tls_port or "--tls-cert" not in self.extra) and \
                    (self.http_port or not want_http) and \
                    (self.metrics_port or "--prometheus-port" not in self.extra) and \
                    (self.kafka_port or "--kafka-port" not in self.extra) and \
                    (self.kafka_tls_port or "--kafka-tls-port" not in self.extra):
                return self
        raise RuntimeError("server did not print its port in time")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
