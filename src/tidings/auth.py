"""Users, vhosts and permissions: the ``users.json`` file in the data directory.

Shared by every face (AMQP now, HTTP later). Passwords are stored as salted PBKDF2-SHA256
hashes. Permissions follow RabbitMQ: per user and vhost, three regular expressions
(configure, write, read) matched against the full resource name. The default ``guest`` user
(password ``guest``, all permissions on ``/``) may only connect from loopback, as in RabbitMQ.

The file is reread when it changes, so ``tidings users ...`` takes effect on a running server
without a restart. Writes go to a temporary file renamed over the old one.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tidings.errors import AccessRefusedError, ConfigError, NotFoundError
from tidings.files import PRIVATE_FILE_MODE, make_private_directory

USERS_FILE = "users.json"
#: PBKDF2 iterations: slow enough to resist guessing, fast enough for a login per connection.
PBKDF2_ITERATIONS = 100_000
DEFAULT_USER = "guest"
#: RabbitMQ's management tags. administrator and monitoring see every vhost in listings and
#: metrics; everyone else sees the vhosts they have permissions in.
TAGS = ("administrator", "monitoring", "policymaker", "management", "impersonator")
SEES_ALL_TAGS = frozenset({"administrator", "monitoring"})
#: The identity of the local operator: the CLI talking to the running server it shares a data
#: directory with (``control.json``, owner-only, holds its token). Every permission, every
#: vhost. A users-file user cannot take this name.
CONTROL_USER = "tidings:control"
Permission = Literal["configure", "write", "read"]


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ITERATIONS)
    encoded_salt, encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"pbkdf2-sha256${PBKDF2_ITERATIONS}${encoded_salt}${encoded}"


#: The SCRAM mechanisms whose credentials every user gets (Kafka's SASL/SCRAM): salted keys
#: (RFC 5802's StoredKey and ServerKey), never the password; 8192 rounds (Kafka allows 4096 to
#: 16384).
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_ITERATIONS = 8_192


def scram_credentials(password: str) -> dict[str, list[Any]]:
    """A user's SCRAM credentials: mechanism -> [salt, stored key, server key (base64),
    iterations]."""
    from scramp import ScramMechanism

    out: dict[str, list[Any]] = {}
    for mechanism in SCRAM_MECHANISMS:
        salt, stored, server, rounds = ScramMechanism(mechanism).make_auth_info(
            password, iteration_count=SCRAM_ITERATIONS)
        out[mechanism] = [base64.b64encode(v).decode() for v in (salt, stored, server)] + [
            rounds]
    return out


def new_user(password: str, **extra: Any) -> dict[str, Any]:
    """A users-file entry: the password's hash and SCRAM credentials, never the password."""
    return {"password": hash_password(password), "scram": scram_credentials(password),
            **extra}


#: RabbitMQ's password hashing modules, the hash each uses, and the scheme stored here. A
#: RabbitMQ hash is base64(salt (4 bytes) + H(salt + password)); a user imported with one logs
#: in with it and is moved to tidings' own hash (and gets SCRAM keys) at the first good login.
RABBIT_HASHES = {"rabbit_password_hashing_sha256": "sha256",
                 "rabbit_password_hashing_sha512": "sha512",
                 "rabbit_password_hashing_md5": "md5"}
#: How tidings' own hash is named in a definitions export.
OWN_HASHING = "tidings_pbkdf2_sha256"


def imported_hash(password_hash: str, algorithm: str | None) -> str:
    """The stored form of a definitions file's ``password_hash`` (ConfigError for a hashing
    algorithm tidings cannot check). RabbitMQ's default algorithm is SHA-256."""
    if algorithm == OWN_HASHING:
        if password_hash and not password_hash.startswith("pbkdf2-sha256$"):
            raise ConfigError("a tidings_pbkdf2_sha256 hash starts with 'pbkdf2-sha256$'")
        return password_hash
    name = RABBIT_HASHES.get(algorithm or "rabbit_password_hashing_sha256")
    if name is None:
        raise ConfigError(f"hashing algorithm '{str(algorithm)[:60]}' is not one tidings can "
                          f"check ({', '.join([*RABBIT_HASHES, OWN_HASHING])})")
    if not password_hash:  # RabbitMQ's way of saying: no password login
        return ""
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except ValueError:
        raise ConfigError("password_hash is not base64") from None
    if len(raw) != 4 + hashlib.new(name).digest_size:
        raise ConfigError(f"password_hash is not a salted {name} hash")
    return f"rabbit-{name}${password_hash}"


def exported_hash(stored: str) -> tuple[str, str]:
    """A stored hash as a definitions file names it: (password_hash, hashing_algorithm)."""
    scheme, _, rest = stored.partition("$")
    for algorithm, name in RABBIT_HASHES.items():
        if scheme == f"rabbit-{name}":
            return rest, algorithm
    return stored, OWN_HASHING


def check_password(password: str, stored: str) -> bool:
    if stored.startswith("rabbit-"):
        scheme, _, encoded = stored.partition("$")
        raw = base64.b64decode(encoded)
        got = hashlib.new(scheme.removeprefix("rabbit-"), raw[:4] + password.encode()).digest()
        return hmac.compare_digest(got, raw[4:])
    try:
        scheme, iterations, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2-sha256":
        return False
    got = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt),
                              int(iterations))
    return hmac.compare_digest(got, base64.b64decode(digest))


@dataclass
class Users:
    """The users file's content."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    vhosts: list[str] = field(default_factory=lambda: ["/"])
    #: vhost -> user -> {"configure": re, "write": re, "read": re}
    permissions: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    #: sha256(token) -> {"user": name, "name": label}: bearer tokens for the HTTP gateway
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def default(cls) -> Users:
        users = cls()
        users.users[DEFAULT_USER] = new_user("guest", loopback_only=True,
                                             tags=["administrator"])
        users.permissions["/"] = {DEFAULT_USER: {"configure": ".*", "write": ".*", "read": ".*"}}
        return users

    def to_json(self) -> dict[str, Any]:
        return {"users": self.users, "vhosts": self.vhosts, "permissions": self.permissions,
                "tokens": self.tokens}


#: Good logins remembered (by user and a keyed hash of the password, never the password), so a
#: connection or HTTP request with known credentials costs no PBKDF2 round. Failures are never
#: remembered: a guesser's attempts cost it a full hash each.
_LOGINS_MAX = 1_000
#: Longest password or user name looked at; longer ones are refused without hashing.
MAX_CREDENTIAL_CHARS = 1_024
#: Hashes computed at once (in threads, off the event loop): guessers queue behind each other
#: instead of taking every core from the broker.
HASHING_THREADS = 1
#: Delay before answering a peer's next login after its failures: 0.1 s doubling per failure,
#: at most 5 s, forgotten after a good login or a quiet minute.
FAILURE_DELAY_S, FAILURE_DELAY_MAX_S, FAILURE_MEMORY_S = 0.1, 5.0, 60.0
_FAILURES_MAX = 10_000


@functools.cache
def _no_user_hash() -> str:
    """Hashed instead of a stored hash when the user does not exist, so the answer takes as
    long as for a real user and timing does not tell which names exist."""
    return hash_password(secrets.token_urlsafe(16))


#: How long resource checks (every publish, declare, consume) trust the users file before
#: looking at it again; logins always look. RabbitMQ caches such checks per channel for good.
CHECK_FRESH_S = 1.0
#: Remembered check results (dropped whenever the file changes).
_DECISIONS_MAX = 10_000


class UserStore:
    """Loads, checks and edits the users file of one data directory."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / USERS_FILE
        self._mtime: tuple[int, int, int] | None = None
        self._users = Users.default()
        self._logins: dict[tuple[str, bytes], None] = {}
        self._login_key_salt = secrets.token_bytes(16)
        #: peer host -> (failures, time of the last one)
        self._failures: dict[str, tuple[int, float]] = {}
        self._hashing: asyncio.Semaphore | None = None
        self._control_token: str | None = None
        self._decisions: dict[tuple[str, str, str, str], bool] = {}
        self._looked_at = 0.0
        self.reload()

    def reload(self) -> Users:
        """Reread the file if it changed; a missing file means the defaults."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return self._users
        # Saves replace the file, so the inode tells two saves within one mtime tick apart.
        mtime = (st.st_mtime_ns, st.st_ino, st.st_size)
        if mtime != self._mtime:
            try:
                data = json.loads(self.path.read_text())
                self._users = Users(data["users"], data["vhosts"], data["permissions"],
                                    data.get("tokens", {}))
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"users file '{self.path}' is not valid: {e}") from e
            self._mtime = mtime
            self._logins.clear()
            self._decisions.clear()
        return self._users

    def save(self, users: Users) -> None:
        make_private_directory(self.path.parent)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(users.to_json(), indent=2, sort_keys=True))
        os.chmod(tmp, PRIVATE_FILE_MODE)  # an older .tmp left by a crash kept its mode
        os.replace(tmp, self.path)
        self._users = users
        self._mtime = None
        self._decisions.clear()

    # -- checks ----------------------------------------------------------------------------

    def authenticate(self, username: str, password: str, peer_host: str | None) -> str:
        """The user's name when the login is good; raises AccessRefusedError otherwise.
        Hashes on the calling thread: servers use :meth:`authenticate_async`."""
        user, key = self._login_user(username, password)
        if key not in self._logins:
            ok = check_password(password, user.get("password", "") if user else _no_user_hash())
            self._login_result(user is not None and ok, username, key,
                               _throttled(username, user, peer_host))
        return self._admit(username, user, peer_host)

    async def authenticate_async(self, username: str, password: str,
                                 peer_host: str | None) -> str:
        """As :meth:`authenticate`, with the hash off the event loop (one at a time) and a
        growing delay for a peer whose logins keep failing. :data:`CONTROL_USER` logs in with
        the token of :meth:`control_token` (processes sharing the data directory)."""
        if username == CONTROL_USER:
            token = self._control_token
            if token is None or not hmac.compare_digest(password.encode(), token.encode()):
                raise AccessRefusedError(f"login was refused for user '{username}'")
            return CONTROL_USER
        user, key = self._login_user(username, password)
        if key not in self._logins:
            delay = self._failure_delay(_throttled(username, user, peer_host))
            if delay:
                await asyncio.sleep(delay)
            if self._hashing is None:
                self._hashing = asyncio.Semaphore(HASHING_THREADS)
            stored = user.get("password", "") if user else _no_user_hash()
            async with self._hashing:
                ok = await asyncio.to_thread(check_password, password, stored)
            self._login_result(user is not None and ok, username, key,
                               _throttled(username, user, peer_host))
            if user is not None and stored.startswith("rabbit-"):  # imported: rehash it
                await asyncio.to_thread(self._upgrade, username, password, stored)
        return self._admit(username, user, peer_host)

    def _upgrade(self, username: str, password: str, stored: str) -> None:
        """A user imported with RabbitMQ's hash logged in: store tidings' hash and SCRAM keys
        instead (unless the password was changed meanwhile)."""
        users = self.reload()
        user = users.users.get(username)
        if user is not None and user.get("password") == stored:
            user.update(new_user(password))
            self.save(users)

    def _login_user(self, username: str, password: str
                    ) -> tuple[dict[str, Any] | None, tuple[str, bytes]]:
        if len(username) > MAX_CREDENTIAL_CHARS or len(password) > MAX_CREDENTIAL_CHARS:
            raise AccessRefusedError(f"login was refused for user '{username[:64]}'")
        user = self.reload().users.get(username)
        digest = hmac.new(self._login_key_salt, password.encode(errors="surrogatepass"),
                          hashlib.sha256).digest()
        return user, (username, digest)

    def _login_result(self, ok: bool, username: str, key: tuple[str, bytes],
                      peer: str) -> None:
        if not ok:
            failures, _ = self._failures.pop(peer, (0, 0.0))
            if len(self._failures) >= _FAILURES_MAX:
                self._failures.pop(next(iter(self._failures)))
            self._failures[peer] = (failures + 1, time.monotonic())
            raise AccessRefusedError(f"login was refused for user '{username}'")
        self._failures.pop(peer, None)
        if len(self._logins) >= _LOGINS_MAX:
            self._logins.pop(next(iter(self._logins)))
        self._logins[key] = None

    def _failure_delay(self, peer: str) -> float:
        failures, last = self._failures.get(peer, (0, 0.0))
        if not failures or time.monotonic() - last > FAILURE_MEMORY_S:
            return 0.0
        return min(FAILURE_DELAY_S * 2 ** (failures - 1), FAILURE_DELAY_MAX_S)

    @staticmethod
    def _admit(username: str, user: dict[str, Any] | None, peer_host: str | None) -> str:
        assert user is not None  # a good login has a user
        if user.get("loopback_only") and not _is_loopback(peer_host):
            raise AccessRefusedError(
                f"user '{username}' can only connect via localhost"
            )
        return username

    def scram_credentials(self, username: str, mechanism: str
                          ) -> tuple[bytes, bytes, bytes, int] | None:
        """The user's SCRAM credentials for ``mechanism`` (salt, stored key, server key,
        iterations), or None: no such user, or one made before tidings kept them."""
        user = self.reload().users.get(username)
        found = (user or {}).get("scram", {}).get(mechanism)
        if not found:
            return None
        salt, stored, server, rounds = found
        return (base64.b64decode(salt), base64.b64decode(stored), base64.b64decode(server),
                int(rounds))

    def admit(self, username: str, peer_host: str | None) -> str:
        """``username`` once its credentials were proven some other way (SCRAM): raises
        AccessRefusedError when it may not connect from ``peer_host``."""
        user = self.reload().users.get(username)
        if user is None:
            raise AccessRefusedError(f"login was refused for user '{username}'")
        return self._admit(username, user, peer_host)

    def anonymous(self, peer_host: str | None) -> str | None:
        """Who a connection that does not log in is (protocols where logging in is optional,
        as MQTT in RabbitMQ): :data:`DEFAULT_USER` where it may connect from ``peer_host``."""
        try:
            return self.admit(DEFAULT_USER, peer_host)
        except AccessRefusedError:
            return None

    def control_token(self) -> str:
        """The token of :data:`CONTROL_USER`, valid while this process runs (made once)."""
        if self._control_token is None:
            self._control_token = secrets.token_urlsafe(32)
        return self._control_token

    def authenticate_token(self, token: str) -> str:
        """The user a bearer token belongs to; raises AccessRefusedError otherwise."""
        if self._control_token is not None and hmac.compare_digest(token, self._control_token):
            return CONTROL_USER
        found = self.reload().tokens.get(hashlib.sha256(token.encode()).hexdigest())
        if found is None or found.get("user") not in self._users.users:
            raise AccessRefusedError("unknown or revoked bearer token")
        return found["user"]

    def check_vhost(self, username: str, vhost: str) -> None:
        users = self.reload()
        if username == CONTROL_USER:
            if vhost not in users.vhosts:
                raise NotFoundError(f"no vhost '{vhost}'")
            return
        if vhost not in users.vhosts:
            raise NotFoundError(f"no vhost '{vhost}'")
        if username not in users.permissions.get(vhost, {}):
            raise AccessRefusedError(f"access to vhost '{vhost}' refused for user '{username}'")

    def check(self, username: str, vhost: str, permission: Permission, kind: str,
              name: str) -> None:
        """Raise AccessRefusedError unless ``username`` may ``permission`` the resource."""
        if username == CONTROL_USER:
            return
        now = time.monotonic()
        if now - self._looked_at >= CHECK_FRESH_S:
            self._looked_at = now
            self.reload()
        key = (username, vhost, permission, name)
        allowed = self._decisions.get(key)
        if allowed is None:
            allowed = self._allowed(username, vhost, permission, name)
            if len(self._decisions) >= _DECISIONS_MAX:
                self._decisions.clear()
            self._decisions[key] = allowed
        if not allowed:
            raise AccessRefusedError(
                f"{permission} access to {kind} '{name}' in vhost '{vhost}' "
                f"refused for user '{username}'"
            )

    def _allowed(self, username: str, vhost: str, permission: Permission, name: str) -> bool:
        perms = self._users.permissions.get(vhost, {}).get(username)
        pattern = perms.get(permission, "") if perms else ""
        if name.startswith("amq.rabbitmq.reply-to"):
            return True  # direct reply-to is a pseudo-queue of the channel, as in RabbitMQ
        return bool(pattern) and re.fullmatch(pattern, name) is not None

    # -- edits (the CLI) -------------------------------------------------------------------

    def add_user(self, username: str, password: str) -> None:
        if username == CONTROL_USER:
            raise ConfigError(f"'{CONTROL_USER}' is reserved for the local operator")
        users = self.reload()
        if username in users.users:
            raise ConfigError(f"user '{username}' already exists")
        users.users[username] = new_user(password)
        self.save(users)

    def set_password(self, username: str, password: str) -> None:
        """A new password: its hash and SCRAM keys replace the old ones (logins cached with
        the old one are forgotten when the file is saved)."""
        users = self.reload()
        user = users.users.get(username)
        if user is None:
            raise NotFoundError(f"no user '{username}'")
        user.update(new_user(password))
        self.save(users)
        self._logins.clear()

    def delete_user(self, username: str) -> None:
        users = self.reload()
        if users.users.pop(username, None) is None:
            raise NotFoundError(f"no user '{username}'")
        for perms in users.permissions.values():
            perms.pop(username, None)
        self.save(users)

    def set_permissions(self, username: str, vhost: str, configure: str, write: str,
                        read: str) -> None:
        users = self.reload()
        if username not in users.users:
            raise NotFoundError(f"no user '{username}'")
        if vhost not in users.vhosts:
            raise NotFoundError(f"no vhost '{vhost}'")
        for pattern in (configure, write, read):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"bad permission pattern '{pattern}': {e}") from e
        users.permissions.setdefault(vhost, {})[username] = {
            "configure": configure, "write": write, "read": read,
        }
        self.save(users)

    def clear_permissions(self, username: str, vhost: str) -> None:
        """``username`` has no permissions in ``vhost`` any more."""
        users = self.reload()
        if users.permissions.get(vhost, {}).pop(username, None) is None:
            raise NotFoundError(f"no permissions for user '{username}' in vhost '{vhost}'")
        self.save(users)

    def create_token(self, username: str, name: str) -> str:
        """A new bearer token for ``username``; only its hash is stored."""
        users = self.reload()
        if username not in users.users:
            raise NotFoundError(f"no user '{username}'")
        token = secrets.token_urlsafe(32)
        users.tokens[hashlib.sha256(token.encode()).hexdigest()] = {"user": username,
                                                                    "name": name}
        self.save(users)
        return token

    def delete_token(self, name: str) -> None:
        users = self.reload()
        found = [h for h, t in users.tokens.items() if t.get("name") == name]
        if not found:
            raise NotFoundError(f"no token named '{name}'")
        for h in found:
            del users.tokens[h]
        self.save(users)

    def list_tokens(self) -> list[tuple[str, str]]:
        return sorted((t["name"], t["user"]) for t in self.reload().tokens.values())

    def import_users(self, users: list[tuple[str, str, list[str]]],
                     permissions: list[tuple[str, str, str, str, str]],
                     vhosts: list[str]) -> None:
        """Apply a definitions file's users ``(name, stored hash, tags)``, permissions
        ``(user, vhost, configure, write, read)`` and vhosts in one save, after checking them
        all (ConfigError names the first bad one; nothing is changed then)."""
        current = self.reload()
        known_users = set(current.users) | {name for name, _, _ in users}
        known_vhosts = set(current.vhosts) | set(vhosts)
        for name, _, tags in users:
            if name == CONTROL_USER or not name:
                raise ConfigError(f"user name '{name}' cannot be imported")
            check_tags(tags)
        for user, vhost, *patterns in permissions:
            if user not in known_users:
                raise ConfigError(f"permissions for user '{user}', who is neither here nor in "
                                  f"the file")
            if vhost not in known_vhosts:
                raise ConfigError(f"permissions in vhost '{vhost}', which is neither here nor "
                                  f"in the file")
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ConfigError(f"bad permission pattern '{pattern}': {e}") from None
        for vhost in vhosts:
            if vhost not in current.vhosts:
                current.vhosts.append(vhost)
        for name, stored, tags in users:
            entry = current.users.setdefault(name, {})
            if entry.get("password") != stored:
                entry.pop("scram", None)  # keys of another password
                entry["password"] = stored
            entry["tags"] = sorted(set(tags))
        for user, vhost, configure, write, read in permissions:
            current.permissions.setdefault(vhost, {})[user] = {
                "configure": configure, "write": write, "read": read}
        self.save(current)
        self._logins.clear()

    def stored_hash(self, username: str) -> str:
        return str(self.reload().users.get(username, {}).get("password", ""))

    def add_vhost(self, vhost: str) -> None:
        users = self.reload()
        if vhost in users.vhosts:
            raise ConfigError(f"vhost '{vhost}' already exists")
        users.vhosts.append(vhost)
        self.save(users)

    def delete_vhost(self, vhost: str) -> None:
        users = self.reload()
        if vhost not in users.vhosts:
            raise NotFoundError(f"no vhost '{vhost}'")
        users.vhosts.remove(vhost)
        users.permissions.pop(vhost, None)
        self.save(users)

    def set_tags(self, username: str, tags: list[str]) -> None:
        users = self.reload()
        if username not in users.users:
            raise NotFoundError(f"no user '{username}'")
        check_tags(tags)
        users.users[username]["tags"] = sorted(set(tags))
        self.save(users)

    def is_administrator(self, username: str) -> bool:
        return username == CONTROL_USER or "administrator" in self.tags_of(username)

    def tags_of(self, username: str) -> list[str]:
        return list(self.reload().users.get(username, {}).get("tags", []))

    def visible_vhosts(self, username: str) -> set[str] | None:
        """The vhosts ``username`` may see in listings: None for all (administrator and
        monitoring), else those the user has permissions in."""
        users = self.reload()
        if username == CONTROL_USER:
            return None
        if SEES_ALL_TAGS.intersection(users.users.get(username, {}).get("tags", [])):
            return None
        return {v for v, perms in users.permissions.items() if username in perms}

    def list_users(self) -> list[str]:
        return sorted(self.reload().users)

    def list_vhosts(self) -> list[str]:
        return list(self.reload().vhosts)

    def permissions_of(self, username: str) -> dict[str, dict[str, str]]:
        return {v: p[username] for v, p in self.reload().permissions.items() if username in p}


def check_tags(tags: list[str]) -> None:
    """ConfigError naming the first tag tidings does not know."""
    unknown = [t for t in tags if t not in TAGS]
    if unknown:
        raise ConfigError(f"unknown tag '{unknown[0]}' (tags: {', '.join(TAGS)})")


def _throttled(username: str, user: dict[str, Any] | None, peer_host: str | None) -> str:
    """What failed logins slow down: a user's logins from one address (guessing alice's
    password from an address does not delay bob's correct login from it), and every unknown
    user's from that address together (so that inventing names does not escape the delay)."""
    return f"{username if user is not None else ''}\x00{peer_host or ''}"


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return True  # a Unix socket or an in-process peer
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"
