"""``tidings keys``: encryption at rest of a data directory (``storage/keys.py``).

``new`` prints a fresh master key line; ``status`` says what is sealed under which key,
``rotate`` has a new active master key wrap every data key, ``rewrite`` seals everything again
under the newest data keys. ``status`` and ``rotate`` ask the server holding the directory
when one runs (it reads its own key file again); otherwise, and always for ``rewrite`` (stop
the server first), they work on the directory here, with the keyring from
``--encryption-key-file`` or ``TIDINGS_ENCRYPTION_KEY``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tidings import logs
from tidings.cli_control import find_server
from tidings.errors import ConfigError
from tidings.storage import key_admin
from tidings.storage.keys import KEY_ENV, Keyring, new_master_key


def add_keys_parser(commands: Any) -> None:
    p = commands.add_parser("keys", help="encryption at rest: new key, status, rotate, rewrite")
    p.add_argument("action", choices=["new", "status", "rotate", "rewrite"],
                   help="new: print a fresh master key line (ID:BASE64); status: what is "
                        "sealed under which key; rotate: rewrap every data key by the "
                        "keyring's first (active) key and start a new data key; rewrite: seal "
                        "every record again under the newest data key (plain ones too)")
    p.add_argument("--id", default="key-1", help="the id of the key 'new' prints")
    p.add_argument("--json", action="store_true", help="status as JSON")


async def run_keys_command(args: argparse.Namespace) -> int:
    if args.action == "new":
        print(f"{args.id}:{new_master_key()}")
        return 0
    directory = Path(args.data_dir)
    server = find_server(args.data_dir) if args.action in ("status", "rotate") else None
    if args.action == "status":
        found = (await server.call("GET", "/api/tidings/keys") if server is not None
                 else key_admin.status(directory).as_dict())
        _print_status(found, args.json)
        return 0
    if server is not None:  # rotate while it serves: it reads its own key file again
        rotated = await server.call("POST", "/api/tidings/keys/rotate")
        _print_rotated(rotated)
        return 0
    keyring = Keyring.from_environment()
    if keyring is None:
        raise ConfigError(f"'tidings keys {args.action}' needs the keyring: give "
                          f"--encryption-key-file or {KEY_ENV}")
    who = f"cli:{logs.os_user()}"
    if args.action == "rotate":
        _print_rotated(key_admin.rotate(directory, keyring).as_dict())
        logs.audit(who, "cli", "rotate", "encryption keys", master_key=keyring.active)
        return 0
    done, damaged, segments = key_admin.rewrite(directory, keyring)
    logs.audit(who, "cli", "rewrite", "encryption keys", records=done, segments=segments)
    print(f"{done} record(s) and {segments} stream segment(s) sealed again under the newest "
          f"data keys" + (f"; {damaged} that do not open were left as they are (quarantined "
                          f"at the next start)" if damaged else ""))
    return 0


def _print_status(found: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(found, indent=2))
        return
    if not found["data_keys"]:
        print("not encrypted: no data keys")
    for number, master in found["data_keys"].items():
        print(f"data key {number}: wrapped by master key '{master}'")
    for table in ("messages", "definitions", "stream_segments"):
        counts = ", ".join(f"{n} {what}" for what, n in found[table].items()) or "none"
        print(f"{table.replace('_', ' ')}: {counts}")


def _print_rotated(rotated: dict[str, Any]) -> None:
    print(f"{rotated['data_keys_rewrapped']} data key(s) and "
          f"{rotated['segments_rewrapped']} stream segment key(s) rewrapped by master key "
          f"'{rotated['master_key']}'; new writes use data key {rotated['new_data_key']}")
