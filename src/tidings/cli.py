"""The ``tidings`` command: the composition root (config → store → broker → servers).

``tidings serve`` runs the broker with its AMQP listener; ``users`` and ``vhosts`` edit the
users file (a running server rereads it); the operating commands (``queues``, ``declare``,
``publish``, ``policies``, ``status``, ...: ``cli_control.py``) ask the management API of the
server holding the data directory, or of the directory opened here when none does;
``quarantine`` reads the store. Bad flags give one line and exit code 2; errors at run time
give one line and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import tidings
from tidings.cli_control import (
    COMMANDS,
    add_control_parsers,
    delete_vhost,
    find_server,
    run_control_command,
)
from tidings.cli_keys import add_keys_parser, run_keys_command
from tidings.cli_serve import add_serve_parser, kafka_flag_problem, loop_factory, serve
from tidings.cli_users import add_users_parsers, run_users_command
from tidings.cli_worker import add_worker_parser, run_worker
from tidings.errors import ConfigError, TidingsError
from tidings.logs import audit, configure_from_environment, os_user
from tidings.storage.keys import KEY_FILE_ENV

#: Where the embedded broker keeps its data unless told otherwise.
DEFAULT_DATA_DIR = "./tidings-data"


class _Parser(argparse.ArgumentParser):
    """Every (sub)command: one-line errors with exit code 2, defaults shown in its help, and
    ``--data-dir`` accepted before or after the command (``tidings serve --data-dir DIR``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--data-dir", default=argparse.SUPPRESS,
                          help="data directory of the broker (env TIDINGS_DATA_DIR)")
        self.add_argument("--encryption-key-file", default=argparse.SUPPRESS, metavar="PATH",
                          help="keyring that encrypts the data directory at rest (env "
                               "TIDINGS_ENCRYPTION_KEY_FILE, or TIDINGS_ENCRYPTION_KEY with "
                               "the keyring itself; docs/security.md)")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _port(text: str) -> int:
    """A TCP port for a flag (0: any free one; -1 where a flag documents it as off)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not -1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (0-65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tidings", description="A message queue and event bus for Python.")
    parser.set_defaults(data_dir=os.environ.get("TIDINGS_DATA_DIR", DEFAULT_DATA_DIR))
    parser.add_argument("--version", action="version", version=f"tidings {tidings.__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    add_serve_parser(commands, _port)
    add_worker_parser(commands)
    add_users_parsers(commands)
    add_control_parsers(commands)
    add_keys_parser(commands)
    quarantine = commands.add_parser(
        "quarantine", help="list stored records that could not be read (moved aside on start)")
    quarantine.add_argument("--export", metavar="DIR",
                            help="write each record's bytes and an index.json into DIR")
    quarantine.add_argument("--drop", action="store_true",
                            help="delete them from the data directory (after --export, say)")
    return parser


async def _quarantine(args: argparse.Namespace) -> int:
    """From the running server's API when one holds the directory, else from the store
    itself (no broker is started, so nothing is recovered or moved)."""
    from tidings.storage import SqliteStore, quarantine
    from tidings.storage.quarantine import QuarantinedRecord

    remote = find_server(args.data_dir)
    if remote is not None:
        if args.drop:
            raise tidings.ConfigError("--drop needs the server stopped (it edits the directory)")
        found = [QuarantinedRecord(r["id"], f"{r['vhost']}\x1f{r['queue']}", r["seq"],
                                   r["reason"], r["quarantined_at"],
                                   base64.b64decode(r["data_base64"]))
                 for r in await remote.call("GET", "/api/quarantine")]
        _show_quarantine(args, found)
        return 0
    store = SqliteStore(args.data_dir)
    try:
        found = quarantine.records(store)
        _show_quarantine(args, found)
        if args.drop:
            for r in found:
                quarantine.drop(store, r.id)
                audit(f"cli:{os_user()}", "cli", "drop quarantined record", r.id)
            print(f"dropped {len(found)} record(s)")
    finally:
        store.close()
    return 0


def _show_quarantine(args: argparse.Namespace, found: list[Any]) -> None:
    if args.export:
        out = Path(args.export)
        out.mkdir(parents=True, exist_ok=True)
        index = []
        for r in found:
            name = f"{r.seq}.record"
            (out / name).write_bytes(r.data)
            index.append({"file": name, "vhost": r.vhost, "queue": r.queue, "seq": r.seq,
                          "reason": r.reason, "quarantined_at": r.quarantined_at})
        (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")
        print(f"exported {len(found)} record(s) to {out}")
        return
    print(f"{'seq':>12}  {'vhost':<10}{'queue':<30}{'bytes':>10}  reason")
    for r in found:
        print(f"{r.seq:>12}  {r.vhost:<10}{r.queue:<30}{len(r.data):>10}  {r.reason}")


async def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return await serve(args)
    configure_from_environment()  # (the CLI's own changes are audited too)
    if args.command == "vhosts" and args.action == "delete":  # its contents go too
        return await delete_vhost(args.data_dir, args.name)
    if args.command in ("users", "vhosts", "tokens"):
        return run_users_command(args)
    creates = args.command == "definitions" and args.action == "import"
    drawing = args.command == "machines" and args.name == "graph"  # reads no directory
    if args.command == "keys" and args.action == "new":
        return await run_keys_command(args)
    if not os.path.isdir(args.data_dir) and not creates and not drawing:
        raise tidings.ConfigError(f"no data directory '{args.data_dir}' (see --data-dir)")
    if args.command == "quarantine":
        return await _quarantine(args)
    if args.command == "keys":
        return await run_keys_command(args)
    if args.command in COMMANDS:
        return await run_control_command(args)
    raise ConfigError(f"unknown command '{args.command}'")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `tidings`
        parser.print_help()
        return 0
    if getattr(args, "encryption_key_file", None):  # (every store opened here reads it)
        os.environ[KEY_FILE_ENV] = args.encryption_key_file
    if args.command == "worker":
        try:
            return run_worker(args)
        except TidingsError as e:  # an app that cannot be loaded or shared: a usage error
            print(f"tidings worker: error: {e}", file=sys.stderr)
            return 2
    if args.command == "serve" and (problem := kafka_flag_problem(args)) is not None:
        parser.error(problem)
    try:
        factory = loop_factory(args.loop) if args.command == "serve" else None
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tidings stats | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyError as e:
        print(f"tidings: error: no queue {e}", file=sys.stderr)
    except TidingsError as e:
        print(f"tidings: error: {e}", file=sys.stderr)
    except OSError as e:  # a data directory that is a file, read-only, on a full disk, ...
        where = f" '{e.filename}'" if e.filename else ""
        print(f"tidings: error: {e.strerror or e}{where}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
