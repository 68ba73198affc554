"""Owner-only files and directories: a data directory holds messages and password hashes.

On the ground floor because the store (the database, its lock) and the users file (auth) both
create files in the data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from tidings.errors import ConfigError

PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_directory(directory: Path) -> None:
    """Create ``directory`` (and parents) owner-only; an existing one is left as it is."""
    if directory.is_dir():
        return
    try:
        directory.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create data directory '{directory}': "
                          f"{e.strerror or e}") from e


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, owner-only, all or nothing and durable on return (a
    temporary file fsynced, renamed over ``path``, then the directory fsynced)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync a directory, so the names created or renamed in it survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
