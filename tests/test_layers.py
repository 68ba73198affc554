"""The layering of docs/architecture.md, checked on the source: imports only go down, the
faces reach the broker only through its front door, and routing/ has no import circle.

Every ``import`` in a module counts, also those inside functions. A module is a face when it
talks to the outside world for the broker (``amqp/``, ``http/``, the embedded transport, the
CLI); a composition root builds the object graph and may import what it wires.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tidings.routing.front_door import FrontDoor

SRC = Path(__file__).resolve().parent.parent / "src" / "tidings"

#: The ground floor: imported by everything, imports nothing above it.
GROUND = {"errors", "message", "codecs", "clock", "auth", "patterns", "statistics", "dead_letters",
          "stream_starts", "basic_properties", "content_header", "message_batches", "files",
          "resources", "values", "record_batch", "kafka_records", "transitions",
          "machine_diagram", "logs"}

#: routing/, lowest first: a module imports only modules listed before it.
ROUTING_ORDER = ["arguments", "policies", "exchange", "topology_rows", "ready", "expiry",
                 "overflow", "queue", "stream", "session", "vhost", "delayed", "declarations",
                 "machines", "upkeep", "reporting", "recovery", "front_door", "broker",
                 "definitions_io"]

#: What faces may import from routing/.
FRONT_DOOR = {"tidings.routing.front_door", "tidings.routing.definitions_io"}

#: Modules that build the object graph (store → broker → servers) and may import its parts.
COMPOSITION_ROOTS = {"__main__", "cli", "cli_serve", "cli_control", "cli_users", "cli_worker",
                     "cli_keys",
                     "shared", "urls"}

#: Client modules that talk to another engine: they know the Transport protocol, the ground
#: floor and their own client library, never routing/.
REMOTE_TRANSPORTS = {"client.amqp", "client.amqp_batching", "client.nats", "client.nats_pull",
                     "client.nats_subjects",
                     "client.nats_streams", "client.redis_streams",
                     "client.redis", "client.redis_scripts", "client.tokens", "client.turns",
                     "client.engine", "client.remote",
                     "client.management", "client.resilient"}

#: Names of the broker's insides a face must not mention (and ``broker.vhosts``).
INSIDES = {"Queue", "Entry", "VirtualHost", "VirtualHosts", "ReadyMessages"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every tidings module ``path`` imports (``from tidings.x import y`` counts as
    ``tidings.x.y`` when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("tidings")}
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("tidings") and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full.removeprefix("tidings.") in MODULES else node.module)
    return out


def _short(name: str) -> str:
    return name.removeprefix("tidings").removeprefix(".")


def _layer(module: str) -> str:
    top = module.split(".")[0]
    if module in COMPOSITION_ROOTS:
        return "root"
    if top in GROUND:
        return "ground"
    if module == "client.local":
        return "face"
    if module in REMOTE_TRANSPORTS:
        return "remote"
    return {"storage": "storage", "routing": "routing", "amqp": "face", "http": "face",
            "kafka": "face",
            "client": "client", "testing": "testing"}.get(top, "other")


def _allowed(module: str, target: str) -> bool:
    """Whether ``module`` may import ``target`` (both short names)."""
    layer, tlayer = _layer(module), _layer(target)
    if target == "" or tlayer == "ground":
        return layer != "ground" or target.split(".")[0] in GROUND
    if layer == "root" or layer == "testing":
        return True
    if layer == "storage":
        return tlayer == "storage"
    if layer == "routing":
        if tlayer == "storage":
            return True
        if tlayer != "routing":
            return False
        rank = ROUTING_ORDER.index
        return rank(target.split(".")[1]) < rank(module.split(".")[1])
    if layer in ("face", "client", "remote"):
        if tlayer == "routing":
            return layer == "face" and f"tidings.{target}" in FRONT_DOOR
        if tlayer == "storage":
            return False
        if layer == "remote":
            return tlayer in ("client", "remote") and target != "client.local"
        if module.startswith(("amqp", "kafka")):
            return target.startswith(module.split(".")[0])
        if module.startswith("http"):
            return target.startswith("http") or target == "client.transport"
        return tlayer in ("client", "remote", "face") and \
            not target.startswith(("amqp", "http", "kafka"))
    return False


def test_every_module_has_a_layer() -> None:
    assert not [m for m in MODULES if _layer(m) == "other"]
    assert set(ROUTING_ORDER) == {m.split(".")[1] for m in MODULES if m.startswith("routing.")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module: str) -> None:
    bad = sorted(t for t in map(_short, _imports(MODULES[module])) if not _allowed(module, t))
    assert not bad, f"{module} imports {bad}: upward or sideways (docs/architecture.md)"


FACES = sorted(m for m in MODULES if _layer(m) == "face")


def _front_door_members() -> set[str]:
    return {n for n in dir(FrontDoor) if not n.startswith("_")}


def _broker_expressions(tree: ast.AST) -> list[tuple[str, int]]:
    """Attributes read off anything named ``broker`` (``broker.x``, ``self.broker.x``...)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            holder = node.value
            name = holder.attr if isinstance(holder, ast.Attribute) else \
                holder.id if isinstance(holder, ast.Name) else ""
            if name == "broker":
                out.append((node.attr, node.lineno))
    return out


@pytest.mark.parametrize("module", FACES)
def test_faces_use_only_the_front_door(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    members = _front_door_members()
    beyond = [f"line {line}: broker.{attr}" for attr, line in _broker_expressions(tree)
              if attr not in members]
    assert not beyond, f"{module} reaches past the front door: {beyond}"
    insides = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} & INSIDES |
                     {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                      and n.attr == "vhosts" and isinstance(n.value, ast.Attribute)
                      and n.value.attr == "broker"})
    assert not insides, f"{module} touches the broker's insides: {insides}"


def test_the_checks_catch_a_violation() -> None:
    """The rules above are not vacuous: the violations they exist for are caught."""
    assert not _allowed("amqp.channel", "routing.queue")
    assert not _allowed("http.app", "amqp.server")
    assert not _allowed("kafka.server", "amqp.server")
    assert not _allowed("kafka.server", "routing.stream")
    assert not _allowed("client.nats", "routing.broker")
    assert not _allowed("routing.queue", "routing.vhost")  # upward inside routing
    assert not _allowed("storage.sqlite", "routing.queue")
    assert not _allowed("message", "routing.queue")
    assert _allowed("amqp.channel", "routing.front_door")
    assert _allowed("cli_serve", "routing.broker")
    tree = ast.parse("def f(broker):\n    return broker.vhosts, broker._dead_letter\n")
    assert {a for a, _ in _broker_expressions(tree)} - _front_door_members() == {
        "vhosts", "_dead_letter"}


def test_the_dead_letter_queue_name_is_written_once() -> None:
    """The ``<queue>.dead`` rule lives in tidings.dead_letters; nobody else spells it."""
    spelled = [m for m, path in MODULES.items() if m != "dead_letters"
               and any(s in path.read_text() for s in ('".dead"', "'.dead'", '}.dead"'))]
    assert not spelled


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph`` (Tarjan's strongly connected components of more than
    one module, or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _import_graph() -> dict[str, set[str]]:
    """Every module's imports of other tidings modules, those under ``TYPE_CHECKING`` and
    inside functions included (a circle hidden from the interpreter is still a circle)."""
    return {module: {_short(t) for t in _imports(path)} - {module, ""} & set(MODULES)
            for module, path in MODULES.items()}


def test_no_import_circles_anywhere() -> None:
    """Not between packages, and not inside one either (amqp/, client/, kafka/, ...)."""
    circles = _cycles(_import_graph())
    assert not circles, f"import circles: {circles}"


def test_the_circle_check_catches_one(tmp_path: Path) -> None:
    graph = {"amqp.channel": {"amqp.server"}, "amqp.server": {"amqp.extensions"},
             "amqp.extensions": {"amqp.channel"}, "amqp.codec": set()}
    assert _cycles(graph) == [["amqp.channel", "amqp.extensions", "amqp.server"]]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from tidings.client.client import Client\n")
    path = tmp_path / "probe.py"
    path.write_text(ast.unparse(tree))
    assert "tidings.client.client" in _imports(path)  # an import for the type checker counts
