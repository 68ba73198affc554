"""Encryption at rest: the master keyring, data keys wrapped by it, and sealed records.

Opt-in. A **keyring** holds one or more master keys by id, the first one active; it comes from
``TIDINGS_ENCRYPTION_KEY`` (the keyring itself) or the file that ``TIDINGS_ENCRYPTION_KEY_FILE``
(``--encryption-key-file``) names. Each line (or comma-separated entry) is ``ID:KEY`` with
the key as 32 bytes in base64 (``tidings keys new`` makes one).

A store does not encrypt with a master key: it keeps **data keys** (random 256-bit keys), each
stored wrapped (AES-256-GCM) by a master key, and seals records with a data key. Rotating the
master key rewraps the data keys (a few bytes each) and never rewrites a record; a new data
key can take the new writes at the same time.

A **sealed record** is ``0xE1``, the data key's number (2 bytes), a 12-byte nonce and the
AES-256-GCM ciphertext with its tag. A nonce is never used twice under one key: each
:class:`Sealer` draws 8 random bytes when it is made and counts the other 4 (new random
bytes when the count runs out), so two sealers share a prefix with a chance of 2^-64 per
pair, and sealing takes no system call per record. The associated data binds it to its
place (its queue and position, or a definition's kind and key), so a record moved or swapped
on disk fails its check like a flipped bit does. A record that does not start with ``0xE1``
is plain (written before encryption was turned on) and is read as it is.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidings.errors import ConfigError, TidingsError

#: Environment variables: the keyring itself, or a file holding it.
KEY_ENV, KEY_FILE_ENV = "TIDINGS_ENCRYPTION_KEY", "TIDINGS_ENCRYPTION_KEY_FILE"
SEALED = 0xE1
_HEAD = struct.Struct(">BH")
NONCE_BYTES = 12
_COUNTER = struct.Struct(">I")
_COUNTER_MAX = 2**32 - 1
_SEALED_AT = _HEAD.size + NONCE_BYTES
#: Bytes a sealed record adds to the plain one.
OVERHEAD = _HEAD.size + NONCE_BYTES + 16
_WRAP_AD = b"tidings data key "


class SealError(TidingsError):
    """A sealed record that does not open: damaged, moved, or under a data key not known
    (the store logs it and hands the bytes on unopened, so the record is quarantined)."""

    code = "unreadable_record"


@dataclass(frozen=True)
class Keyring:
    """Master keys by id; ``active`` wraps new data keys."""

    keys: dict[str, bytes]
    active: str

    @classmethod
    def parse(cls, text: str, where: str) -> Keyring:
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for raw in text.replace(",", "\n").splitlines():
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            ident, sep, encoded = entry.partition(":")
            ident = ident.strip()
            if not sep or not ident or len(ident) > 64:
                raise ConfigError(f"{where}: each key is ID:BASE64 (an id of 1 to 64 "
                                  f"characters, a colon, then the key)")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{where}: key '{ident}' is not base64") from None
            if len(key) != 32:
                raise ConfigError(f"{where}: key '{ident}' is {len(key)} bytes; a key is 32 "
                                  f"bytes (256 bits)")
            if ident in keys:
                raise ConfigError(f"{where}: key '{ident}' is given twice")
            keys[ident] = key
            order.append(ident)
        if not order:
            raise ConfigError(f"{where}: no key in it")
        return cls(keys, order[0])

    @classmethod
    def from_environment(cls) -> Keyring | None:
        """The keyring the environment gives (None: encryption is off)."""
        text = os.environ.get(KEY_ENV)
        if text:
            return cls.parse(text, KEY_ENV)
        path = os.environ.get(KEY_FILE_ENV)
        if not path:
            return None
        try:
            content = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read the encryption key file '{path}': "
                              f"{e.strerror or e}") from None
        return cls.parse(content, f"key file '{path}'")

    def wrap(self, number: int, data_key: bytes) -> tuple[str, bytes]:
        """``data_key`` wrapped by the active master key: (master id, nonce + ciphertext)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[self.active]).encrypt(nonce, data_key,
                                                          _WRAP_AD + str(number).encode())
        return self.active, nonce + sealed

    def unwrap(self, number: int, master: str, wrapped: bytes) -> bytes:
        key = self.keys.get(master)
        if key is None:
            raise ConfigError(f"data key {number} is wrapped by master key '{master}', which "
                              f"the keyring does not hold (it has "
                              f"{', '.join(sorted(self.keys))}): give that key too")
        try:
            return AESGCM(key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                       _WRAP_AD + str(number).encode())
        except InvalidTag:
            raise ConfigError(f"master key '{master}' does not open data key {number}: it is "
                              f"not the key this data was encrypted with") from None


def new_master_key() -> str:
    """A fresh master key, base64 (for ``tidings keys new``)."""
    return base64.b64encode(os.urandom(32)).decode()


class Sealer:
    """Seals and opens records with the store's data keys (the newest seals)."""

    def __init__(self, data_keys: dict[int, bytes], current: int) -> None:
        self._ciphers = {n: AESGCM(k) for n, k in data_keys.items()}
        self.current = current
        self._prefix = os.urandom(NONCE_BYTES - _COUNTER.size)
        self._count = 0

    def seal(self, data: bytes, place: bytes) -> bytes:
        if self._count > _COUNTER_MAX:
            self._prefix, self._count = os.urandom(NONCE_BYTES - _COUNTER.size), 0
        nonce = self._prefix + _COUNTER.pack(self._count)
        self._count += 1
        return _HEAD.pack(SEALED, self.current) + nonce + \
            self._ciphers[self.current].encrypt(nonce, data, place)

    def open_sealed(self, data: bytes, place: bytes) -> bytes:
        """A record that must be sealed (a stream segment's: never plain); SealError when it
        does not open. (The reads' hot path; slicing bytes is faster than a memoryview here.)"""
        if len(data) < OVERHEAD or data[0] != SEALED:
            raise SealError("a record that should be sealed is not (or is cut short)")
        number = int.from_bytes(data[1:3])
        cipher = self._ciphers.get(number)
        if cipher is None:
            raise SealError(f"sealed under data key {number}, which the store does not hold")
        try:
            return cipher.decrypt(data[_HEAD.size:_SEALED_AT], data[_SEALED_AT:], place)
        except InvalidTag:
            raise SealError("a sealed record failed its check (damaged, or moved from its "
                            "place)") from None

    def open(self, data: bytes, place: bytes) -> bytes:
        """The plain record (a plain one as it is); SealError when it does not open."""
        return self.open_sealed(data, place) if is_sealed(data) else data


def is_sealed(data: bytes) -> bool:
    return bool(data) and data[0] == SEALED


def data_key_of(data: bytes) -> int | None:
    """The number of the data key a sealed record is under (None: plain)."""
    return _HEAD.unpack_from(data)[1] if is_sealed(data) and len(data) >= _HEAD.size else None
