"""The code base stays ruff clean (the linter is part of the test extra)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_reports_nothing() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    out = subprocess.run([ruff, "check", "--quiet", str(ROOT)], capture_output=True, text=True,
                         check=False, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


#: The longest a function of the package may be (house rule: it fits on a screen).
MAX_FUNCTION_LINES = 80


def _long_functions(source: str) -> list[tuple[str, int]]:
    import ast

    return [(node.name, node.end_lineno - node.lineno + 1)
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and
            node.end_lineno is not None and
            node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_function_is_longer_than_a_screen() -> None:
    found = {f"{path.relative_to(ROOT)}:{name}": lines
             for path in sorted((ROOT / "src" / "tidings").rglob("*.py"))
             for name, lines in _long_functions(path.read_text())}
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines: {found}"
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert _long_functions(f"def f():\n{body}\n") == [("f", MAX_FUNCTION_LINES + 1)]
