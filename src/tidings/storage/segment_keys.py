"""Data keys of stream segments: one per segment, kept wrapped by the master key beside it.

An encrypted stream's segment ``<base>.seg`` has a ``<base>.key`` file, written durably before
the segment's first record: ``{"master": ID, "wrapped": BASE64}``, the segment's own random
256-bit data key wrapped (AES-256-GCM) by master key ``ID``. Its records' payloads are sealed
with it (``storage/keys.py``); their heads (length, CRC, offset, timestamp, count) stay
readable, so recovery, seeks and retention never need a key. Retention deletes the key with
its segment. Rotating the master key rewraps these small files and never touches a record.

A segment without a key file was written before encryption was on: its records are plain.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

from tidings.errors import ConfigError
from tidings.files import write_durably
from tidings.storage.keys import Keyring, Sealer

#: A segment file's suffix, and its key file's.
SEGMENT_SUFFIX, KEY_SUFFIX = ".seg", ".key"
#: The number a segment's data key has in its sealed records' heads (one key per segment).
SEGMENT_KEY_NUMBER = 0


def key_path(segment_path: Path) -> Path:
    return segment_path.with_suffix(KEY_SUFFIX)


def master_of(segment_path: Path) -> str | None:
    """The id of the master key wrapping the segment's data key (None: plain segment)."""
    entry = _read(segment_path)
    return None if entry is None else entry[0]


def _read(segment_path: Path) -> tuple[str, bytes] | None:
    path = key_path(segment_path)
    try:
        entry = json.loads(path.read_bytes())
        return str(entry["master"]), base64.b64decode(entry["wrapped"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"the key file '{path}' is damaged: {e}") from None


def new_segment_key(segment_path: Path, base: int, keyring: Keyring) -> Sealer:
    """A fresh data key for the segment, stored wrapped (durable before this returns)."""
    key = os.urandom(32)
    store_segment_key(segment_path, base, key, keyring)
    return Sealer({SEGMENT_KEY_NUMBER: key}, SEGMENT_KEY_NUMBER)


def store_segment_key(segment_path: Path, base: int, key: bytes, keyring: Keyring) -> None:
    """Keep ``key`` as the segment's data key, wrapped by the active master key."""
    master, wrapped = keyring.wrap(base, key)
    entry = {"master": master, "wrapped": base64.b64encode(wrapped).decode()}
    write_durably(key_path(segment_path), json.dumps(entry).encode())


def segment_key(segment_path: Path, base: int, keyring: Keyring | None) -> Sealer | None:
    """The sealer of a segment (None: a plain one). An encrypted segment and no keyring, or a
    keyring without its master key, stops here naming the key id."""
    entry = _read(segment_path)
    if entry is None:
        return None
    master, wrapped = entry
    if keyring is None:
        raise ConfigError(f"stream segment '{segment_path}' is encrypted under master key "
                          f"'{master}': give the keyring with --encryption-key-file or "
                          f"TIDINGS_ENCRYPTION_KEY")
    key = keyring.unwrap(base, master, wrapped)
    return Sealer({SEGMENT_KEY_NUMBER: key}, SEGMENT_KEY_NUMBER)


def rewrap(segment_path: Path, base: int, keyring: Keyring) -> bool:
    """Rewrap the segment's data key by the active master key; False for a plain segment."""
    entry = _read(segment_path)
    if entry is None:
        return False
    master, wrapped = entry
    if master != keyring.active:
        store_segment_key(segment_path, base, keyring.unwrap(base, master, wrapped), keyring)
    return True


def segment_files(streams: Path) -> Iterator[tuple[Path, int]]:
    """Every segment file under a streams directory (one directory per stream), with its
    base offset."""
    if not streams.is_dir():
        return
    for path in sorted(streams.glob(f"*/*{SEGMENT_SUFFIX}")):
        if path.stem.isdigit():
            yield path, int(path.stem)


def check_all(streams: Path, keyring: Keyring) -> None:
    """Every segment's data key opens under ``keyring`` (ConfigError naming the master key
    that is missing or wrong): checked before anything is rewrapped."""
    for path, base in segment_files(streams):
        segment_key(path, base, keyring)


def rewrap_all(streams: Path, keyring: Keyring) -> int:
    """Rewrap every encrypted segment's data key by the active master key; returns how many
    segments are encrypted."""
    return sum(rewrap(path, base, keyring) for path, base in segment_files(streams))
