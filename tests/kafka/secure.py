"""A ``tidings serve`` whose Kafka face requires SASL and also listens with TLS, for tests of
logins: its users are made before it starts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tidings.auth import UserStore

from ..amqp.test_security_and_flow import make_certificate
from ..serverproc import ServerProcess, running


@contextlib.contextmanager
def secure_kafka_face(folder: Path, make_users: Callable[[UserStore], None]
                      ) -> Iterator[tuple[ServerProcess, Path]]:
    """The server (its Kafka ports and a certificate for ``localhost``) and that
    certificate, to trust."""
    data = folder / "data"
    make_users(UserStore(data))
    cert, key = make_certificate(folder)
    with running(data, "--kafka-port", "0", "--kafka-tls-port", "0", "--kafka-require-sasl",
                 "--tls-cert", str(cert), "--tls-key", str(key), "--http-port", "-1",
                 "--kafka-advertised-host", "localhost",
                 "--kafka-group-initial-rebalance-delay-ms", "0") as proc:
        yield proc, cert
