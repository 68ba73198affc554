"""One process per data directory, enforced with an advisory lock.

Two processes writing one SQLite file would each see "database is locked" at random moments
(the peers' complaint #9). Instead the second opener fails at once, naming the directory and
the process that holds it. The kernel releases ``flock`` when the holder dies, even by kill -9.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tidings.errors import ConfigError, ResourceLockedError
from tidings.files import PRIVATE_FILE_MODE

LOCK_NAME = "LOCK"


class DirectoryLock:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            self._fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
        except OSError as e:
            raise ConfigError(f"cannot use data directory '{directory}': "
                              f"{e.strerror or e}") from e
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise ResourceLockedError(
                f"data directory '{directory}' is in use by process {holder}"
            ) from e
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
