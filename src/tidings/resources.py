"""What the process uses, read from /proc (Linux): resident memory for alarms and reports."""

from __future__ import annotations


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MiB (0.0 where /proc is not readable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def total_memory_mb() -> float:
    """Physical memory of the machine in MiB (0.0 where /proc is not readable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0
