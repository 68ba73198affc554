"""``tidings users|vhosts|tokens ...``: edit the users file of a data directory.

A running ``tidings serve`` rereads the file on the next login or permission check.
"""

from __future__ import annotations

import argparse
import getpass
import json
import secrets
import sys
from typing import Any

from tidings import logs
from tidings.auth import UserStore
from tidings.cli_control import print_table
from tidings.errors import ConfigError


def add_users_parsers(commands: Any) -> None:
    users = commands.add_parser("users", help="manage users and their permissions")
    sub = users.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a user")
    passwd = sub.add_parser("set-password", aliases=["passwd"],
                            help="change a user's password (and the SCRAM keys Kafka clients "
                                 "log in with)")
    for p in (add, passwd):
        p.add_argument("name", help="user name")
        p.add_argument("password", nargs="?", help="omit to be asked (or give --password-stdin)")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input")
    delete = sub.add_parser("delete", help="delete a user")
    delete.add_argument("name", help="user name")
    users_list = sub.add_parser("list", help="list users, their tags and permissions")
    users_list.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    perms = sub.add_parser("set-permissions", help="set a user's permissions in a vhost")
    perms.add_argument("name", help="user name")
    perms.add_argument("configure", help="regular expression of the names it may declare and "
                                         "delete, e.g. '.*' or '^$'")
    perms.add_argument("write", help="regular expression of the names it may publish to")
    perms.add_argument("read", help="regular expression of the names it may consume from")
    perms.add_argument("--vhost", default="/", help="virtual host")
    tags = sub.add_parser("set-tags", help="set a user's management tags (administrator and "
                                           "monitoring see every vhost over HTTP)")
    tags.add_argument("name", help="user name")
    tags.add_argument("tags", nargs="*", help="administrator, monitoring, management, ...; "
                                              "none to clear")

    tokens = commands.add_parser("tokens", help="manage bearer tokens for the HTTP gateway")
    tsub = tokens.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="create a token for a user (printed once)")
    create.add_argument("user", help="the user the token logs in as")
    create.add_argument("--name", help="a label to find and delete it by (default: random)")
    tsub.add_parser("delete", help="revoke a token by its name").add_argument(
        "name", help="the token's label")
    tsub.add_parser("list", help="list token names and their users")

    vhosts = commands.add_parser("vhosts", help="manage virtual hosts")
    vsub = vhosts.add_subparsers(dest="action", required=True)
    for action in ("add", "delete"):
        vsub.add_parser(action, help=f"{action} a vhost").add_argument(
            "name", help="virtual host name")
    vsub.add_parser("list", help="list vhosts")


def run_users_command(args: argparse.Namespace) -> int:
    code = _users_command(args)
    if args.action not in ("list", None):  # a change: audited, with who ran it
        target = getattr(args, "name", None) or getattr(args, "user", None) or ""
        details = {"vhost": args.vhost} if getattr(args, "vhost", None) else {}
        logs.audit(f"cli:{logs.os_user()}", "cli", f"{args.command} {args.action}", str(target),
                   **details)
    return code


def _users_command(args: argparse.Namespace) -> int:
    store = UserStore(args.data_dir)
    if args.command == "tokens":
        if args.action == "create":
            name = args.name or f"token-{secrets.token_hex(4)}"
            print(store.create_token(args.user, name))
        elif args.action == "delete":
            store.delete_token(args.name)
        else:
            for name, user in store.list_tokens():
                print(f"{name}\t{user}")
        return 0
    if args.command == "vhosts":
        if args.action == "add":
            store.add_vhost(args.name)
        else:  # (delete: through the API, so the vhost's contents go too)
            print("\n".join(store.list_vhosts()))
        return 0
    if args.action in ("add", "set-password", "passwd"):
        password = args.password
        if args.password_stdin or (password is None and not sys.stdin.isatty()):
            password = sys.stdin.readline().rstrip("\n")  # a pipe, or no terminal to ask on
        elif password is None:
            password = getpass.getpass(f"password for '{args.name}': ")
        if not password:
            raise ConfigError("the password is empty: give it, type it, or pipe it to "
                              "--password-stdin")
        if args.action == "add":
            store.add_user(args.name, password)
        else:
            store.set_password(args.name, password)
    elif args.action == "delete":
        store.delete_user(args.name)
    elif args.action == "set-permissions":
        store.set_permissions(args.name, args.vhost, args.configure, args.write, args.read)
    elif args.action == "set-tags":
        store.set_tags(args.name, args.tags)
    else:
        rows = [{"name": name, "tags": store.tags_of(name),
                 "permissions": store.permissions_of(name)} for name in store.list_users()]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print_table([{"name": r["name"], "tags": ",".join(r["tags"]),
                      "permissions": "; ".join(f"{v}: {p['configure']} {p['write']} {p['read']}"
                                               for v, p in r["permissions"].items())}
                     for r in rows], [("name", "name"), ("tags", "tags"),
                                      ("permissions (configure write read)", "permissions")])
    return 0
