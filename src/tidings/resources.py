"""What the process uses, read from /proc (Linux): resident memory for alarms and reports,
descriptors and sockets for the node's numbers."""

from __future__ import annotations

import os
import resource


def _kib(path: str, field: str) -> float:
    """The ``field:`` line of a /proc file, in MiB (0.0 where /proc is not readable)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MiB (0.0 where /proc is not readable)."""
    return _kib(f"/proc/{pid}/status", "VmRSS:")


def total_memory_mb() -> float:
    """Physical memory of the machine in MiB (0.0 where /proc is not readable)."""
    return _kib("/proc/meminfo", "MemTotal:")


def max_descriptors() -> int:
    """How many descriptors this process may open (its soft limit)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_descriptors() -> tuple[int, int]:
    """Open descriptors of this process, and how many are sockets (0, 0 without /proc)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return 0, 0
    sockets = 0
    for name in names:
        try:
            sockets += os.readlink(f"/proc/self/fd/{name}").startswith("socket:")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor, say)
    return len(names), sockets
