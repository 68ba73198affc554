"""A type fuzz of the HTTP gateway: every operation of ``docs/openapi.json`` with hostile values
in its path, query and body (lone surrogates, JSON nested 5,000 deep, wrong types, huge
numbers, tag-shaped tables), against a real ``tidings serve``. What counts: answers of 500 or
more, connections reset, tracebacks in the server's log; each must be 0.

The test suite runs a short form (``tests/http/test_fuzz.py``); ``python bench/reliability.py
http`` the long one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

OPENAPI = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"
#: Stands for JSON too deep to build in Python (its encoder recurses): replaced in the text.
DEEP = "\x00deep\x00"
HOSTILE: list[Any] = [
    "\ud800", "a\udfffb", "\udc80" * 3, DEEP, [], {}, [[[]]], 0, -1, 2**70, -(2**70), 1.5,
    True, False, None, "x" * 5000, {"$b": "!"}, {"x-death": 5}, "", " ", "amq.gen-x", "#",
    "a.*.#", "..", "\n", "%2F", {"\ud800": 1}, [DEEP],
]
HOSTILE_PATH = ["%2F", "%ED%A0%80", "x" * 300, "%00", "..", "a%2Fb", "%F0%9F%98%80", "%25"]


@dataclass
class HttpFuzzReport:
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    resets: int = 0
    tracebacks: int = 0

    def figures(self) -> dict[str, object]:
        return {"requests": self.requests,
                "answers by status": dict(sorted(self.statuses.items())),
                "5xx answers": len(self.server_errors),
                "first 5xx": self.server_errors[:5],
                "connections reset": self.resets,
                "tracebacks in server log": self.tracebacks}


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) for every operation of the served OpenAPI document."""
    doc = json.loads(OPENAPI.read_text())
    return [(method.upper(), path, op) for path, ops in doc["paths"].items()
            for method, op in ops.items()]


def _plausible(schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "object":
        return {k: _plausible(v) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return []
    if kind == "integer":
        return 1
    if kind == "boolean":
        return True
    if kind == "number":
        return 1.0
    return "fuzz"


def _body(op: dict[str, Any], rng: random.Random) -> Any:
    content = (op.get("requestBody") or {}).get("content") or {}
    schema = (content.get("application/json") or {}).get("schema") or {}
    body = _plausible(schema) if schema else {}
    if not isinstance(body, dict) or not body or rng.random() < 0.15:
        return rng.choice(HOSTILE)
    for key in rng.sample(sorted(body), k=min(len(body), rng.randint(1, 3))):
        body[key] = rng.choice(HOSTILE)
    if rng.random() < 0.3:  # a hostile key too
        body[rng.choice(["\ud800", "x" * 300, "$t", ""])] = rng.choice(HOSTILE)
    return body


def _encode(value: Any) -> bytes:
    text = json.dumps(value)  # (ensure_ascii: a lone surrogate becomes a "\ud800" escape)
    deep = "[" * 5000 + "]" * 5000
    return text.replace(json.dumps(DEEP), deep).encode()


def _path(path: str, rng: random.Random) -> str:
    fields = {"vhost": "%2F", "name": "fuzz-q", "topic": "fuzz.topic", "receipt": "r-1"}
    for name in fields:
        if "{" + name + "}" in path:
            value = rng.choice(HOSTILE_PATH) if rng.random() < 0.3 else fields[name]
            path = path.replace("{" + name + "}", value)
    return path


def _query(op: dict[str, Any], rng: random.Random) -> dict[str, str]:
    names = [p["name"] for p in op.get("parameters", []) if p.get("in") == "query"]
    return {n: rng.choice(["\ud800", "x" * 3000, "-1", "true", "1e999", ""]) for n in names
            if rng.random() < 0.5}


def http_fuzz(base_url: str, log: Path, requests: int, seed: int = 1) -> HttpFuzzReport:
    """``requests`` hostile requests spread over every operation; the figures."""
    rng = random.Random(seed)
    report = HttpFuzzReport()
    ops = [op for op in operations() if op[1] != "/events/stream"]  # (it streams for ever)
    with httpx.Client(base_url=base_url, auth=("guest", "guest"), timeout=30) as http:
        http.put("/api/queues/%2F/fuzz-q", json={})
        for i in range(requests):
            method, path, op = ops[i % len(ops)]
            has_body = "requestBody" in op or method in ("POST", "PUT")
            content = _encode(_body(op, rng)) if has_body else None
            query = {k: v.encode(errors="surrogatepass").decode(errors="replace")
                     for k, v in _query(op, rng).items()}
            try:
                answer = http.request(method, _path(path, rng), content=content, params=query,
                                      headers={"content-type": "application/json"})
            except httpx.TransportError:
                report.resets += 1
                continue
            finally:
                report.requests += 1
            report.statuses[answer.status_code] = report.statuses.get(answer.status_code, 0) + 1
            if answer.status_code >= 500:
                report.server_errors.append(
                    f"{method} {path} {(content or b'')[:120]!r} -> {answer.text[:200]}")
    report.tracebacks = log.read_text().count("Traceback")
    return report
