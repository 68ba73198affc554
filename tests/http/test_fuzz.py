"""schemathesis fuzzes every operation of the served OpenAPI document: no input gives a 5xx."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..serverproc import ServerProcess


def test_schemathesis_finds_no_server_error(server: ServerProcess, tmp_path: Path) -> None:
    cli = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    base = f"http://127.0.0.1:{server.http_port}"
    out = subprocess.run(
        [cli, "run", f"{base}/openapi.json", "--checks", "not_a_server_error",
         "--auth", "guest:guest", "--max-examples", os.environ.get("TIDINGS_FUZZ_EXAMPLES",
                                                                     "25"),
         "--seed", "1", "--request-timeout", "10", "--exclude-path", "/events/stream",
         "--phases", "examples,coverage,fuzzing"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


def test_a_type_fuzz_of_every_operation_finds_no_server_error(server: ServerProcess) -> None:
    """Lone surrogates, JSON nested 5,000 deep, wrong types and huge numbers in the path,
    query and body of every documented operation: no 5xx, no reset, no traceback (before:
    a 500 and a reset for each surrogate that reached a response, each deep event body)."""
    from ..http_fuzz import http_fuzz

    report = http_fuzz(f"http://127.0.0.1:{server.http_port}", server.log,
                       int(os.environ.get("TIDINGS_HTTP_FUZZ_REQUESTS", "600")), seed=1)
    figures = report.figures()
    assert figures["5xx answers"] == 0, figures
    assert figures["connections reset"] == 0 and figures["tracebacks in server log"] == 0, \
        figures
