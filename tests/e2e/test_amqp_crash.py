"""kill -9 a real ``tidings serve`` under load from real pika clients, restart it, and check:
every confirmed message is delivered, and no committed ack is undone (the short form of
``python bench/reliability.py kill``; the loop itself is in ``tests/reliability.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..reliability import kill_loop

KILLS = 5


@pytest.mark.crash
def test_kill_9_under_load_keeps_confirmed_messages_and_committed_acks(tmp_path: Path) -> None:
    report = kill_loop(tmp_path / "data", KILLS)
    assert report.confirmed > 100 and report.client_errors >= KILLS
    assert not report.lost, f"{len(report.lost)} confirmed messages lost: {report.lost[:5]}"
    assert not report.redelivered_after_commit, report.redelivered_after_commit[:5]
    assert not report.acks_undone, f"committed acks undone: {report.acks_undone[:5]}"
