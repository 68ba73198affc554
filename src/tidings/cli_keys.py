"""``tidings keys``: encryption at rest of a data directory (``storage/keys.py``).

``new`` prints a fresh master key line; ``status``, ``rotate`` and ``rewrite`` work on a data
directory no process holds (stop the server first): what is sealed under which key, a new
active master key wrapping every data key, everything sealed again under the newest data key.
The keyring comes from ``--encryption-key-file`` or ``TIDINGS_ENCRYPTION_KEY``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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


def run_keys_command(args: argparse.Namespace) -> int:
    if args.action == "new":
        print(f"{args.id}:{new_master_key()}")
        return 0
    directory = Path(args.data_dir)
    if args.action == "status":
        found = key_admin.status(directory).as_dict()
        if args.json:
            print(json.dumps(found, indent=2))
            return 0
        if not found["data_keys"]:
            print("not encrypted: no data keys")
        for number, master in found["data_keys"].items():
            print(f"data key {number}: wrapped by master key '{master}'")
        for table in ("messages", "definitions"):
            counts = ", ".join(f"{n} {what}" for what, n in found[table].items()) or "none"
            print(f"{table}: {counts}")
        return 0
    keyring = Keyring.from_environment()
    if keyring is None:
        raise ConfigError(f"'tidings keys {args.action}' needs the keyring: give "
                          f"--encryption-key-file or {KEY_ENV}")
    if args.action == "rotate":
        rewrapped, number = key_admin.rotate(directory, keyring)
        print(f"{rewrapped} data key(s) rewrapped by master key '{keyring.active}'; new "
              f"writes use data key {number}")
        return 0
    done, damaged = key_admin.rewrite(directory, keyring)
    print(f"{done} record(s) sealed again under the newest data key"
          + (f"; {damaged} that do not open were left as they are (quarantined at the next "
             f"start)" if damaged else ""))
    return 0
