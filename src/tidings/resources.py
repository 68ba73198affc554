"""What the process uses, read from /proc (Linux): resident memory for alarms and reports."""

from __future__ import annotations


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
