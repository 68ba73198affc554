"""``tidings serve``: the broker on its data directory with its network listeners.

Wiring only: SqliteStore → Broker → AmqpServer (plain and TLS). SIGINT / SIGTERM close every
connection with 320 CONNECTION_FORCED, flush pending confirms and close the store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tidings import logs
from tidings.errors import BrokenResourceError, ConfigError, ResourceLockedError
from tidings.kafka.settings import DEFAULT_MESSAGE_MAX_BYTES
from tidings.resources import total_memory_mb
from tidings.values import MAX_MESSAGE_BYTES

#: Share of the machine's RAM that held messages and buffers may reach before publishers are
#: blocked (RabbitMQ's default watermark is 0.4 of RAM measured as its whole process; Python
#: objects cost about twice their bytes, hence less here).
DEFAULT_WATERMARK_SHARE = 0.2


def add_serve_parser(commands: Any, port: Callable[[str], int]) -> None:
    serve = commands.add_parser("serve", help="run the broker with its AMQP 0-9-1 listener")
    serve.add_argument("--host", default=os.environ.get("TIDINGS_HOST", "0.0.0.0"),
                       help="address to listen on")
    serve.add_argument("--amqp-port", type=port, default=5672, help="AMQP port")
    serve.add_argument("--http-port", type=port, default=15672,
                       help="HTTP gateway port (-1 disables it)")
    serve.add_argument("--http-max-body-bytes", type=int, default=1 << 20,
                       help="largest HTTP request body accepted")
    serve.add_argument("--prometheus-port", type=port, default=-1,
                       help="also serve GET /metrics without credentials on this port, as "
                            "RabbitMQ's Prometheus plugin does on 15692")
    serve.add_argument("--sse-buffer-events", type=int, default=1000,
                       help="events an SSE reader may fall behind before it is cut off")
    serve.add_argument("--amqps-port", type=port, default=5671,
                       help="AMQP over TLS port, with --tls-cert and --tls-key")
    serve.add_argument("--kafka-port", type=port, default=-1,
                       help="Kafka protocol port (off unless given; Kafka's is 9092)")
    serve.add_argument("--kafka-vhost", default="/",
                       help="the vhost whose streams the Kafka listener serves as topics")
    serve.add_argument("--kafka-advertised-host",
                       help="host Kafka clients are told to connect to (default: --host, or "
                            "127.0.0.1 when that is 0.0.0.0)")
    serve.add_argument("--kafka-advertised-port", type=port,
                       help="port Kafka clients are told to connect to (default: the "
                            "Kafka port)")
    serve.add_argument("--kafka-message-max-bytes", type=int,
                       help=f"largest record batch a Kafka producer may send (Kafka's "
                            f"message.max.bytes; default {DEFAULT_MESSAGE_MAX_BYTES}, or "
                            f"--max-message-bytes when that is lower)")
    serve.add_argument("--kafka-max-partitions", type=int, default=256,
                       help="most partitions one Kafka topic may have")
    serve.add_argument("--kafka-no-auto-create-topics", action="store_true",
                       help="do not create a topic when a Kafka client asks for its metadata")
    serve.add_argument("--kafka-queued-max-request-bytes", type=int, default=256 * 2**20,
                       help="bytes of unfinished Kafka requests held over all connections; "
                            "past it a connection sending more of one is closed")
    serve.add_argument("--kafka-connections-max-idle-ms", type=int, default=600_000,
                       help="close a Kafka connection idle this long (Kafka's "
                            "connections.max.idle.ms)")
    serve.add_argument("--kafka-tls-port", type=port, default=-1,
                       help="Kafka over TLS port, with --tls-cert and --tls-key (off unless "
                            "given)")
    serve.add_argument("--kafka-require-sasl", action="store_true",
                       help="every Kafka client must log in with SASL (PLAIN, SCRAM-SHA-256 "
                            "or -512); else one that does not is guest, from where guest may "
                            "connect")
    serve.add_argument("--kafka-group-min-session-timeout-ms", type=int, default=6_000,
                       help="shortest session timeout a Kafka consumer may ask for")
    serve.add_argument("--kafka-group-max-session-timeout-ms", type=int, default=1_800_000,
                       help="longest session timeout a Kafka consumer may ask for")
    serve.add_argument("--kafka-group-initial-rebalance-delay-ms", type=int, default=3_000,
                       help="how long a new consumer group waits for more members before "
                            "its first rebalance")
    serve.add_argument("--tls-cert", help="PEM certificate (chain) for TLS")
    serve.add_argument("--tls-key", help="PEM private key for TLS")
    serve.add_argument("--heartbeat-s", type=int, default=60,
                       help="heartbeat interval offered to clients (0 disables)")
    serve.add_argument("--handshake-timeout-s", type=float, default=10.0,
                       help="a client that has not opened its connection (TLS and login "
                            "included) this long after connecting is dropped")
    serve.add_argument("--frame-max", type=int, default=131072, help="largest frame, bytes")
    serve.add_argument("--max-message-bytes", type=int, default=MAX_MESSAGE_BYTES,
                       help="largest message body accepted over AMQP; a larger one closes its "
                            "channel with 406")
    serve.add_argument("--memory-high-watermark-mb", type=float,
                       help="block publishers while the messages and buffers the server holds "
                            "in memory exceed this many MiB (default: a fifth of the "
                            "machine's RAM; 0 disables)")
    serve.add_argument("--disk-free-limit-mb", type=float, default=50.0,
                       help="block publishers while free disk is below this")
    serve.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                       help="event loop: uvloop when it is installed (auto; pip install "
                            "'tidings[uvloop]'), or Python's own asyncio loop")
    _add_log_flags(serve)
    serve.add_argument("--log-level", default="INFO", type=str.upper,
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="how much to log (any case)")


def _add_log_flags(serve: argparse.ArgumentParser) -> None:
    """The access and audit logs (``logs.py``)."""
    serve.add_argument("--access-log", metavar="PATH",
                       default=os.environ.get("TIDINGS_ACCESS_LOG"),
                       help="one line per HTTP request to this file ('-': stdout; env "
                            "TIDINGS_ACCESS_LOG; off unless given)")
    serve.add_argument("--access-log-format", choices=["json", "common"], default="json",
                       help="JSON lines, or the common log format")
    serve.add_argument("--audit-log", metavar="PATH", default=os.environ.get("TIDINGS_AUDIT_LOG"),
                       help="one JSON line per change of users, permissions, vhosts, policies, "
                            "definitions, the quarantine or a machine instance ('-': stdout; "
                            "env TIDINGS_AUDIT_LOG; off unless given)")
    serve.add_argument("--log-max-bytes", type=int, default=logs.DEFAULT_MAX_BYTES,
                       help="an access or audit log file is rotated at this size")
    serve.add_argument("--log-backups", type=int, default=logs.DEFAULT_BACKUPS,
                       help="rotated access or audit log files kept")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``tidings serve --loop`` asks for (None: asyncio's own)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as e:
        if choice == "uvloop":
            raise ConfigError("--loop uvloop: uvloop is not installed "
                              "(pip install 'tidings[uvloop]')") from e
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def settle_garbage_collector() -> None:
    """Once the server is up: what start-up made (modules, recovered queues) is moved out of
    the collector's reach, and young objects are collected less often.

    Every message makes a handful of short-lived objects, and CPython's cyclic collector runs
    every 700 of them, each tenth run walking every long-lived object too. Those walks were a
    quarter of a profile of the memory path. Short-lived objects are freed by reference
    counting anyway; the collector is only for cycles, which the hot path does not make.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


#: Allocations between two runs of the cyclic collector in tidings serve (CPython's default
#: is 700).
GC_THRESHOLD = 20_000


def _url_host(host: str) -> str:
    """Where a person on this machine reaches a listener bound to ``host``."""
    if host in ("0.0.0.0", "::", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls_cert and not args.tls_key:
        return None
    if not (args.tls_cert and args.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load TLS certificate '{args.tls_cert}': {e}") from e
    return context


async def serve(args: argparse.Namespace) -> int:
    from tidings.amqp.server import AmqpServer
    from tidings.auth import UserStore
    from tidings.routing.broker import Broker
    from tidings.shared import leave_directory, start_owner_socket
    from tidings.storage.sqlite import SqliteStore

    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for logger, where, style in ((logs.ACCESS, args.access_log, args.access_log_format),
                                 (logs.AUDIT, args.audit_log, "json")):
        try:
            logs.configure(logger, where, style, args.log_max_bytes, args.log_backups)
        except OSError as e:
            raise ConfigError(f"cannot open the log '{where}': {e.strerror or e}") from None
    tls = _tls(args)
    data_dir = Path(args.data_dir)
    try:
        broker = Broker(SqliteStore(data_dir))
    except ResourceLockedError as e:  # an embedded owner: it cannot hand the store over live
        raise ResourceLockedError(
            f"{e}; tidings serve must own its data directory: stop that process (it may be "
            f"an application that opened the directory with tidings.connect), then start "
            f"tidings serve first, and the application joins it") from e
    broker.start()
    watermark_mb = args.memory_high_watermark_mb
    if watermark_mb is None:
        watermark_mb = DEFAULT_WATERMARK_SHARE * total_memory_mb() or None
    server = AmqpServer(broker, UserStore(data_dir), heartbeat_s=args.heartbeat_s,
                        frame_max=args.frame_max,
                        memory_high_watermark_mb=watermark_mb or None,
                        disk_free_limit_mb=args.disk_free_limit_mb, data_dir=data_dir,
                        max_message_bytes=args.max_message_bytes,
                        handshake_timeout_s=args.handshake_timeout_s)
    http: list[Any] = []
    kafka: Any = None
    try:
        listening = [("amqp", args.amqp_port, None, "--amqp-port")]
        if tls is not None:
            listening.append(("amqps", args.amqps_port, tls, "--amqps-port"))
        for scheme, port, context, flag in listening:
            try:
                bound = await server.listen(args.host, port, context)
            except BrokenResourceError as e:
                raise ConfigError(f"port {port} is not available ({flag}): {e}") from e
            print(f"tidings: {scheme} listening on {args.host}:{bound} (data: {data_dir}): "
                  f"{scheme}://guest:guest@{_url_host(args.host)}:{bound}/", flush=True)

        if args.kafka_port >= 0:
            kafka = await _start_kafka(args, broker, server.users, tls)
        await start_owner_socket(server, data_dir)  # embedded processes join through it
        if args.http_port >= 0:
            http = await _start_http(args, broker, server, tls)
            write_control_file(data_dir, args.host, http[0], server.users, tls is not None)
        settle_garbage_collector()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("tidings: shutting down", flush=True)
    finally:
        if http:
            http[0].config.app.state.gateway.shutdown()  # streams and long-polls end now
        for each in http:
            each.should_exit = True
        for each in http:
            await http_task_done(each)
        if kafka is not None:
            await kafka.close()
        await leave_directory(server, data_dir)  # stops the AMQP listeners too
        broker.close()
        with contextlib.suppress(FileNotFoundError):
            (data_dir / CONTROL_FILE).unlink()
    return 0


def kafka_flag_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the Kafka flags as given (a usage error), or None."""
    if args.kafka_port < 0:
        return None
    if args.kafka_message_max_bytes is not None and \
            not 1 <= args.kafka_message_max_bytes <= args.max_message_bytes:
        return (f"--kafka-message-max-bytes {args.kafka_message_max_bytes}: 1 to "
                f"--max-message-bytes ({args.max_message_bytes})")
    if args.kafka_max_partitions < 1:
        return f"--kafka-max-partitions {args.kafka_max_partitions}: at least 1"
    low, high = (args.kafka_group_min_session_timeout_ms,
                 args.kafka_group_max_session_timeout_ms)
    if not 1 <= low <= high:
        return (f"--kafka-group-min-session-timeout-ms {low} and "
                f"--kafka-group-max-session-timeout-ms {high}: 1 <= min <= max")
    if args.kafka_group_initial_rebalance_delay_ms < 0:
        return (f"--kafka-group-initial-rebalance-delay-ms "
                f"{args.kafka_group_initial_rebalance_delay_ms}: at least 0")
    if args.kafka_connections_max_idle_ms < 1:
        return (f"--kafka-connections-max-idle-ms {args.kafka_connections_max_idle_ms}: "
                f"at least 1")
    if args.kafka_queued_max_request_bytes < 1:
        return (f"--kafka-queued-max-request-bytes {args.kafka_queued_max_request_bytes}: "
                f"at least 1")
    if args.kafka_tls_port >= 0 and not (args.tls_cert and args.tls_key):
        return "--kafka-tls-port needs --tls-cert and --tls-key"
    return None


async def _start_kafka(args: argparse.Namespace, broker: Any, users: Any,
                       tls: ssl.SSLContext | None) -> Any:
    from tidings.kafka.server import KafkaServer
    from tidings.kafka.settings import KafkaSettings

    if args.kafka_vhost not in broker.vhost_names():
        raise ConfigError(f"--kafka-vhost: no vhost '{args.kafka_vhost}'")
    host = args.kafka_advertised_host or (
        "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host)
    settings = KafkaSettings(host, args.kafka_advertised_port or 0, vhost=args.kafka_vhost,
                             message_max_bytes=args.kafka_message_max_bytes or min(
                                 DEFAULT_MESSAGE_MAX_BYTES, args.max_message_bytes),
                             max_partitions=args.kafka_max_partitions,
                             auto_create_topics=not args.kafka_no_auto_create_topics,
                             require_sasl=args.kafka_require_sasl,
                             queued_max_request_bytes=args.kafka_queued_max_request_bytes,
                             connections_max_idle_ms=args.kafka_connections_max_idle_ms,
                             group_min_session_timeout_ms=args.kafka_group_min_session_timeout_ms,
                             group_max_session_timeout_ms=args.kafka_group_max_session_timeout_ms,
                             group_initial_rebalance_delay_ms=(
                                 args.kafka_group_initial_rebalance_delay_ms))
    kafka = KafkaServer(broker, settings, users)
    listening = [("kafka", args.kafka_port, None, "--kafka-port")]
    if args.kafka_tls_port >= 0:
        listening.append(("kafka+tls", args.kafka_tls_port, tls, "--kafka-tls-port"))
    for name, port, context, flag in listening:
        try:
            bound = await kafka.listen(args.host, port, context)
        except OSError as e:
            await kafka.close()
            raise ConfigError(f"port {port} is not available ({flag}): "
                              f"{e.strerror or e}") from e
        advertised = settings.port if context is None else bound
        print(f"tidings: {name} listening on {args.host}:{bound} (vhost "
              f"'{args.kafka_vhost}', advertised as {settings.host}:{advertised}"
              f"{', SASL required' if settings.require_sasl else ''})", flush=True)
    return kafka


#: Written into the data directory while the server runs: where the CLI reaches it, and the
#: token that makes it the local operator (owner-only, like the directory).
CONTROL_FILE = "control.json"


def write_control_file(data_dir: Path, host: str, http: Any, users: Any, tls: bool) -> None:
    port = http.servers[0].sockets[0].getsockname()[1]
    scheme = "https" if tls else "http"
    reach = "127.0.0.1" if host in ("0.0.0.0", "::", "") else _url_host(host)
    control = {"pid": os.getpid(), "url": f"{scheme}://{reach}:{port}",
               "token": users.control_token()}
    fd = os.open(data_dir / CONTROL_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(control, f)


def _server_stats(amqp: Any) -> Callable[[], dict[str, float]]:
    def server_stats() -> dict[str, float]:
        numbers = {"connections": float(len(amqp.links)),
                   "channels": float(sum(len(link.channels) for link in amqp.links)),
                   **{name: float(value) for name, value in amqp.counts.items()},
                   "memory_alarm": float(bool(amqp.alarm and "memory" in amqp.alarm)),
                   "disk_alarm": float(bool(amqp.alarm and "disk" in amqp.alarm))}
        if amqp.memory_high_watermark_mb is not None:
            numbers["memory_limit_bytes"] = amqp.memory_high_watermark_mb * 2**20
        if amqp.data_dir is not None:
            numbers["disk_free_bytes"] = float(shutil.disk_usage(amqp.data_dir).free)
            numbers["disk_free_limit_bytes"] = (amqp.disk_free_limit_mb or 0.0) * 2**20
        return numbers

    return server_stats


async def _start_http(args: argparse.Namespace, broker: Any, amqp: Any,
                      tls: ssl.SSLContext | None) -> list[Any]:
    """The gateway on its own port (and /metrics alone on --prometheus-port), in this event
    loop, served by uvicorn."""
    from tidings.amqp.listing import AmqpListing
    from tidings.http.app import build_app, build_metrics_app

    app = build_app(broker, amqp.users, max_body_bytes=args.http_max_body_bytes,
                    server_stats=_server_stats(amqp), connections=AmqpListing(amqp),
                    stream_buffer=args.sse_buffer_events)
    app.state.gateway.events.start()
    app.state.gateway.history.start()
    servers = [await _serve_app(app, args.host, args.http_port, "--http-port", args, tls,
                                "dashboard at /")]
    if args.prometheus_port >= 0:
        metrics = build_metrics_app(broker, _server_stats(amqp))
        servers.append(await _serve_app(metrics, args.host, args.prometheus_port,
                                        "--prometheus-port", args, None, "metrics at /metrics"))
    return servers


async def _serve_app(app: Any, host: str, port: int, flag: str, args: argparse.Namespace,
                     tls: ssl.SSLContext | None, what: str) -> Any:
    import socket

    import uvicorn

    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on such sockets, and without it
    # keep-alive responses wait ~40 ms for delayed ACKs (Nagle)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"port {port} is not available ({flag}): "
                          f"{os.strerror(e.errno or 0)}") from e
    sock.listen(512)
    sock.setblocking(False)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                            ws="wsproto", timeout_graceful_shutdown=2,
                            ssl_certfile=args.tls_cert if tls else None,
                            ssl_keyfile=args.tls_key if tls else None)
    http = _Uvicorn(config)
    http.task = asyncio.get_running_loop().create_task(http._serve(sockets=[sock]))
    while not http.started and not http.task.done():
        await asyncio.sleep(0.01)
    if http.task.done():
        http.task.result()
    scheme = "https" if tls else "http"
    bound = sock.getsockname()[1]
    print(f"tidings: {scheme} listening on {host}:{bound} ({what}): "
          f"{scheme}://{_url_host(host)}:{bound}/", flush=True)
    return http


class _Uvicorn:
    """uvicorn's Server without its own signal handling (``tidings serve`` owns SIGTERM)."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            task: asyncio.Task[None]

            def install_signal_handlers(self) -> None:
                pass

        return Server(config)


async def http_task_done(http: Any) -> None:
    try:
        await asyncio.wait_for(http.task, 10)
    except (TimeoutError, asyncio.CancelledError):
        http.task.cancel()
