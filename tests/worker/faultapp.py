"""The app the worker fault tests run: a task that kills its process, one that never returns
(blocked in C past its time limit), one whose result is not JSON, and a plain one."""

from __future__ import annotations

import os
import time

import tidings

client = tidings.connect(os.environ["FAULTAPP_URL"])


@client.task(queue="faults-die", retries=1, delivery_limit=2, min_backoff_ms=50)
def die() -> None:
    os._exit(3)  # at once, as the OOM killer would: no exception, no goodbye


@client.task(queue="faults", timeout_s=0.3, retries=0)
def hang() -> None:
    time.sleep(60)  # in C: the time limit's interrupt cannot reach it


@client.task(queue="faults", retries=0)
def not_json() -> set[int]:
    return {1, 2}


@client.task(queue="faults")
def add(a: int, b: int) -> int:
    return a + b
