"""The README is the front door: its quickstarts (and the guides' complete examples) run as
pasted."""

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


def test_the_streams_quickstart_runs_as_pasted_and_resumes(tmp_path: Path) -> None:
    first = _run_section("Quickstart: streams", tmp_path)
    assert first.stdout.splitlines() == ["0 {'n': 0}", "1 {'n': 1}", "2 {'n': 2}"]
    again = _run_section("Quickstart: streams", tmp_path)  # the reader resumes after 2
    assert again.stdout.splitlines() == ["3 {'n': 0}", "4 {'n': 1}", "5 {'n': 2}"]


def test_the_pika_quickstart_runs_as_pasted_against_tidings_serve(tmp_path: Path) -> None:
    """The producer and the consumer of the README, with only the port changed (this
    machine's 5672 may be RabbitMQ's): the consumer prints what the producer sent."""
    from tests.serverproc import ServerProcess

    text = README.read_text()
    section = text.split("## Quickstart: a RabbitMQ client against `tidings serve`", 1)[1]
    producer, consumer = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    server = ServerProcess(tmp_path / "data").start()
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        for program in (producer, consumer):
            changed = program.replace('pika.ConnectionParameters("localhost", 5672)',
                                      f'pika.ConnectionParameters("localhost", {server.port})')
            assert changed.count(str(server.port)) == 1, "only the port may change"
            out = subprocess.run([sys.executable, "-c", changed], env=env, capture_output=True,
                                 text=True, timeout=60)
            assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "received b'Hello World!'"
    finally:
        server.stop()


def _run_section(title: str, cwd: Path, page: Path = README) -> subprocess.CompletedProcess[str]:
    """Run the one Python block of ``page``'s section ``title`` as pasted, in ``cwd``."""
    section = page.read_text().split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", block], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out


def test_the_machine_quickstart_runs_as_pasted(tmp_path: Path) -> None:
    out = _run_section("Quickstart: a state machine", tmp_path)
    assert out.stdout.splitlines() == ["o1 paid 2", "o2 cancelled 2"]


def test_the_machines_guide_example_runs_as_pasted(tmp_path: Path) -> None:
    out = _run_section("A machine", tmp_path, README.parent / "docs" / "machines.md")
    assert out.stdout.splitlines() == ["paid Order(amount=30, paid=30) 2"]
