"""Hostile AMQP streams (mutated handshakes and traffic, garbage, huge frame sizes) against a
real server: each ends in a clean protocol close or hang-up, the server never dies, keeps
answering everyone else, and logs no traceback. The short form of
``python bench/reliability.py fuzz`` (the fuzzer is in ``tests/reliability.py``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..reliability import fuzz


def test_fuzzed_amqp_streams_never_crash_or_hang_the_server(tmp_path: Path) -> None:
    # (100 streams in the suite; TIDINGS_FUZZ_STREAMS=2000 and the reliability harness's long
    # form, bench/reliability.py, go further)
    streams = int(os.environ.get("TIDINGS_FUZZ_STREAMS", "100"))
    report = fuzz(tmp_path / "data", streams, seed=7)
    assert report.server_deaths == 0, report.figures()
    assert report.unanswered_health_checks == 0, report.figures()
    assert report.tracebacks == 0, report.figures()
    assert "still open" not in report.closes or report.closes["still open"] < streams // 2
