"""The README is the front door: its embedded quickstart runs as pasted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_embedded_quickstart_runs_as_pasted(tmp_path: Path) -> None:
    text = README.read_text()
    section = text.split("## Quickstart: the embedded broker", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the embedded quickstart has no Python example"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "mail to ada@example.com" in out.stdout
    assert "billing orders.created {'order': 42}" in out.stdout
    assert (tmp_path / "tidings-data").is_dir()  # durable: one directory on disk
