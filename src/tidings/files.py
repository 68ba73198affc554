"""Owner-only files and directories: a data directory holds messages and password hashes.

On the ground floor because the store (the database, its lock) and the users file (auth) both
create files in the data directory.
"""

from __future__ import annotations

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
