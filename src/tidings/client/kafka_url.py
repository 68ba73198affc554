"""A ``kafka://`` URL as the aiokafka settings of the Kafka engine.

``kafka://[user:password@]host:port[,host:port...][?option=value&...]``; ``kafkas://`` is the
same over TLS. A user and password log in with SASL (``sasl_mechanism``: ``PLAIN``, the
default, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``). Options:

- ``partitions`` (1): partitions of the topics this engine creates (queues, event topics,
  streams); a queue shared by N worker processes needs at least N;
- ``replication`` (1): replicas of those topics;
- ``idempotence`` (true): the idempotent producer (no duplicate from a retried produce);
  ``false`` for a server that does not grant producer ids;
- ``client_id``, ``connect_timeout`` (seconds), and for TLS ``cafile``, ``certfile``,
  ``keyfile``, ``no_verify_ssl``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from tidings.client.remote import connect_timeout_s, redact, url_options
from tidings.errors import ConfigError

_OPTIONS = ("partitions", "replication", "idempotence", "sasl_mechanism", "client_id",
            "cafile", "certfile", "keyfile", "no_verify_ssl")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(slots=True)
class KafkaSettings:
    bootstrap: str
    #: The keyword arguments every aiokafka client of this engine takes.
    common: dict[str, Any] = field(default_factory=dict)
    partitions: int = 1
    replication: int = 1
    idempotence: bool = True
    connect_timeout_s: float = 10.0
    #: The URL without its password, for messages.
    where: str = ""


def _flag(options: dict[str, str], name: str, default: bool) -> bool:
    text = options.get(name)
    if text is None:
        return default
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={text} in the broker URL: give true or false")


def _count(options: dict[str, str], name: str, default: int) -> int:
    text = options.get(name, str(default))
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise ConfigError(f"{name}={text} in the broker URL: give a whole number from 1")
    return int(text)


def _tls(options: dict[str, str], given: ssl.SSLContext | None) -> ssl.SSLContext:
    if given is not None:
        return given
    context = ssl.create_default_context(cafile=options.get("cafile"))
    if options.get("certfile"):
        context.load_cert_chain(options["certfile"], options.get("keyfile"))
    if _flag(options, "no_verify_ssl", False):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def parse(url: str, ssl_context: ssl.SSLContext | None = None) -> KafkaSettings:
    parts = urlsplit(url)
    tls = parts.scheme.lower() == "kafkas"
    options = url_options(url, _OPTIONS)
    netloc = parts.netloc.rpartition("@")[2]
    if not netloc or any(not host.strip() for host in netloc.split(",")):
        raise ConfigError(f"{redact(url)}: name at least one broker, as kafka://host:9092")
    hosts = [h if ":" in h.rsplit("]", 1)[-1] else f"{h}:9092" for h in netloc.split(",")]
    common: dict[str, Any] = {"bootstrap_servers": hosts,
                              "client_id": options.get("client_id", "tidings")}
    if not tls and any(options.get(o) for o in ("cafile", "certfile", "keyfile")):
        raise ConfigError(f"{redact(url)}: TLS options need kafkas://")
    if tls or ssl_context is not None:
        common["ssl_context"] = _tls(options, ssl_context)
    user = unquote(parts.username or "")
    if user:
        mechanism = options.get("sasl_mechanism", "PLAIN").upper()
        if mechanism not in MECHANISMS:
            raise ConfigError(f"sasl_mechanism={mechanism} in the broker URL: one of "
                              f"{', '.join(MECHANISMS)}")
        common.update(sasl_mechanism=mechanism, sasl_plain_username=user,
                      sasl_plain_password=unquote(parts.password or ""))
        common["security_protocol"] = "SASL_SSL" if "ssl_context" in common else \
            "SASL_PLAINTEXT"
    else:
        if "sasl_mechanism" in options:
            raise ConfigError(f"{redact(url)}: sasl_mechanism needs a user and password in "
                              f"the URL")
        common["security_protocol"] = "SSL" if "ssl_context" in common else "PLAINTEXT"
    return KafkaSettings(",".join(hosts), common, _count(options, "partitions", 1),
                         _count(options, "replication", 1),
                         _flag(options, "idempotence", True), connect_timeout_s(options),
                         redact(url))
