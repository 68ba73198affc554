"""The access log and the audit log: where their lines go and how they look.

Two loggers that do not mix with the diagnostic log on stderr:

- ``tidings.access``: one line per HTTP request (``http/access_log.py``), as JSON lines or in
  the common log format;
- ``tidings.audit``: one JSON line per change of users, permissions, tags, vhosts, policies,
  definitions, the quarantine or a state machine instance, from any face (the HTTP API, the
  CLI), with who, when, from where and what.

Each goes to a file (rotated by size, keeping some backups) or to stdout (``-``), as
``tidings serve --access-log`` / ``--audit-log`` say, or ``TIDINGS_ACCESS_LOG`` /
``TIDINGS_AUDIT_LOG`` for the CLI's own commands. Nothing is logged until one is configured.
"""

from __future__ import annotations

import getpass
import json
import logging
import logging.handlers
import os
import sys
import time
from typing import Any

ACCESS = logging.getLogger("tidings.access")
AUDIT = logging.getLogger("tidings.audit")
for _logger in (ACCESS, AUDIT):
    _logger.propagate = False
    _logger.setLevel(logging.INFO)

ACCESS_ENV, AUDIT_ENV = "TIDINGS_ACCESS_LOG", "TIDINGS_AUDIT_LOG"
DEFAULT_MAX_BYTES, DEFAULT_BACKUPS = 100 << 20, 5


def _stamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + \
        f".{int(created % 1 * 1000):03d}Z"


def common_log_line(fields: dict[str, Any], created: float) -> str:
    """A request in the common log format (the duration in ms appended)."""
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(created))
    return (f'{fields["client"]} - {fields["user"]} [{stamp}] "{fields["method"]} '
            f'{fields["path"]} HTTP/1.1" {fields["status"]} {fields["bytes"]} '
            f'{fields["duration_ms"]}')


def json_log_line(fields: dict[str, Any], created: float) -> str:
    return json.dumps({"time": _stamp(created), **fields}, separators=(",", ":"),
                      default=str)


class LineFormatter(logging.Formatter):
    """A record's ``fields`` as one line: JSON (``json``) or the common log format."""

    def __init__(self, style: str = "json") -> None:
        super().__init__()
        self.line = common_log_line if style == "common" else json_log_line

    def format(self, record: logging.LogRecord) -> str:
        return self.line(getattr(record, "fields", {}), record.created)


def _handler(where: str, max_bytes: int, backups: int) -> logging.Handler:
    if where == "-":
        return logging.StreamHandler(sys.stdout)
    return logging.handlers.RotatingFileHandler(where, maxBytes=max_bytes,
                                                backupCount=backups, encoding="utf-8")


def configure(logger: logging.Logger, where: str | None, style: str = "json",
              max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> None:
    """Send ``logger``'s lines to ``where`` (a file path, ``-`` for stdout, None: nowhere)."""
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    if where:
        handler = _handler(where, max_bytes, backups)
        handler.setFormatter(LineFormatter(style))
        logger.addHandler(handler)


def configure_from_environment() -> None:
    """The CLI's own commands: the logs the environment names (when not configured yet)."""
    if not AUDIT.handlers and os.environ.get(AUDIT_ENV):
        configure(AUDIT, os.environ[AUDIT_ENV])
    if not ACCESS.handlers and os.environ.get(ACCESS_ENV):
        configure(ACCESS, os.environ[ACCESS_ENV])


def os_user() -> str:
    """Who runs this process, for the audit log of the CLI's changes."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return str(os.getuid())


def audit(who: str, face: str, action: str, target: str, *, client: str | None = None,
          **details: Any) -> None:
    """One audit record: who (a user, or ``cli:`` and the OS user), through which face, did
    what to which target."""
    if AUDIT.handlers:
        AUDIT.info("", extra={"fields": {"who": who, "face": face, "action": action,
                                         "target": target, "client": client or "-",
                                         **details}})
