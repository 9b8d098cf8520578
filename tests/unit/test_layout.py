"""The package's shape, checked from its source: who may import whom.

Every ``import`` and ``from ... import`` in the runtime package (``service/escalator``) and the
development tools (``service/dev/escalator_dev``) is read with :mod:`ast`, including imports
inside functions: a lazy import is still an arrow. The rules:

- the runtime never imports the development tools (they are not in its wheel);
- no import circle, between modules or between the role folders;
- no CLI command module imports another (shared helpers live in ``cli/_common.py``).
- the wiring (``app.py``) takes the model side finished from ``model/stack.py``, never its parts;
- ``tiers/`` never imports ``calibration/`` (which reads ``tiers/routing.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {
    "escalator": ROOT / "service" / "escalator",
    "escalator_dev": ROOT / "service/dev/escalator_dev",
}


def module_name(path: Path) -> str:
    for top, base in SOURCES.items():
        if path.is_relative_to(base):
            rel = path.relative_to(base).with_suffix("")
            parts = [top, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join(parts)
    raise AssertionError(path)


def all_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for base in SOURCES.values()
        for p in base.rglob("*.py")
        if "__pycache__" not in p.parts
    }


MODULES = all_modules()


def resolve(name: str) -> str | None:
    """The project module an imported name refers to (``a.b.c`` may be a name in ``a.b``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` imports a.b, and a.b.c if c is a module.
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            target = resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_walk_sees_the_imports_it_should() -> None:
    """Guards the test itself: a walk that found nothing would pass every rule below."""
    assert "escalator.engine.worker" in GRAPH["escalator.app"]
    assert "escalator.errors" in GRAPH["escalator.model.caller"]
    assert "escalator.cli.service" in GRAPH["escalator.cli.main"]
    assert any(t.startswith("escalator.") for t in GRAPH["escalator_dev.demo"])


def test_the_runtime_never_imports_the_development_tools() -> None:
    arrows = [
        (m, t)
        for m, targets in GRAPH.items()
        if m.split(".")[0] == "escalator"
        for t in targets
        if t.split(".")[0] == "escalator_dev"
    ]
    assert arrows == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _package_of(module: str) -> str:
    """The role folder (``escalator.model``) or the top-level module (``escalator.app``)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_circle_between_modules() -> None:
    # A package's __init__ re-exporting its own modules is not a circle of behaviour.
    graph = {
        m: {t for t in ts if not (m == t.rpartition(".")[0] and MODULES[m].name == "__init__.py")}
        for m, ts in GRAPH.items()
    }
    assert _cycles(graph) == []


def test_no_import_circle_between_role_folders() -> None:
    graph: dict[str, set[str]] = {}
    for m, targets in GRAPH.items():
        graph.setdefault(_package_of(m), set()).update(
            _package_of(t) for t in targets if _package_of(t) != _package_of(m)
        )
    assert _cycles(graph) == []


COMMANDS = sorted(
    m
    for m in MODULES
    if m.startswith("escalator.cli.") and m not in ("escalator.cli.main", "escalator.cli._common")
)


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_module_imports_another(command: str) -> None:
    assert COMMANDS, "no command modules found"
    others = set(COMMANDS) - {command}
    assert GRAPH[command] & others == set()


def test_the_circle_finder_finds_circles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


#: What the model stack (model/stack.py) assembles: the wiring takes them from it, finished.
MODEL_PARTS = {
    f"escalator.model.{m}"
    for m in ("adapter", "admission", "breaker", "caller", "limits", "holds", "check")
}


def test_the_wiring_takes_the_model_side_finished_from_its_stack() -> None:
    """app.py connects finished parts: the gate, breaker, caller and limits are assembled in
    model/stack.py, so nothing travels up to the wiring and back down."""
    assert "escalator.model.stack" in GRAPH["escalator.app"]
    assert MODEL_PARTS <= set(MODULES), "a model part moved: update MODEL_PARTS"
    assert GRAPH["escalator.app"] & MODEL_PARTS == set()


def test_tiers_never_import_calibration() -> None:
    """Calibration reads tiers/routing.py, so a tier gets calibration's live tests handed in
    behind a protocol (tiers.table.Watches), never by importing them."""
    tiers = [m for m in MODULES if m.startswith("escalator.tiers.")]
    assert "escalator.tiers.table" in tiers
    arrows = [(m, t) for m in tiers for t in GRAPH[m] if t.startswith("escalator.calibration")]
    assert arrows == []


# -- one commit path ---------------------------------------------------------------------------
#: Calls that commit consumer offsets, alone or in a transaction.
COMMIT_CALLS = {"commit", "send_offsets_to_transaction", "commit_transaction"}
#: Modules outside engine/ that may commit, each for a reason that is not consume-and-process:
#: the parked topic's replay command records how far it has sent (a one-shot scan to the end
#: offsets seen at its start, like a CLI tool's bookmark), not a consumer of work.
COMMITS_ALLOWED = {"escalator.kafka.parked"}


def calls_in(module: str, names: set[str]) -> list[int]:
    """Lines of ``module`` that call a method or function attribute named one of ``names``."""
    tree = ast.parse(MODULES[module].read_text())
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in names
    ]


def commits_in(module: str) -> list[int]:
    """Lines of ``module`` that call a method named like an offset commit."""
    return calls_in(module, COMMIT_CALLS)


def test_offsets_are_committed_only_by_the_engine() -> None:
    """One commit path: every offset commit of the runtime is in ``engine/`` (save the
    allowed exceptions above)."""
    committing = {m for m in MODULES if m.startswith("escalator.") and commits_in(m)}
    assert {m for m in committing if m.startswith("escalator.engine.")}, "the scan saw nothing"
    outside = committing - COMMITS_ALLOWED
    assert {m for m in outside if not m.startswith("escalator.engine.")} == set()


def test_the_review_console_has_no_engine_or_lifecycle_of_its_own() -> None:
    """Before issue 23 the console committed through its own code, then ran its own process
    lifecycle: no review module commits, the console's process is a ``process.Service`` like
    the tiers', and only that class answers signals (the CLI's ``read`` aside: not a consumer
    of work)."""
    review = [m for m in MODULES if m.startswith("escalator.review.")]
    assert "escalator.review.handler" in review, "the scan saw nothing"
    assert [m for m in review if commits_in(m)] == []
    assert "escalator.process" in GRAPH["escalator.review.assemble"]
    assert "escalator.process" in GRAPH["escalator.app"]
    signals = {"add_signal_handler", "signal"}  # loop.add_signal_handler, signal.signal
    answering = {m for m in MODULES if m.startswith("escalator.") and calls_in(m, signals)}
    assert answering == {"escalator.process", "escalator.cli.read"}


#: Python 3.11's ``asyncio.wait_for`` loses a cancellation that arrives as the awaited call
#: ends (fixed in 3.12): a loop waiting in it can go on after its task was cancelled, and a
#: close that awaits that task never returns. The runtime uses ``asyncio.timeout``; the one
#: ``wait_for`` left is ``stop_consumer``'s, which needs ``stop()`` in a task of its own.
WAIT_FOR_ALLOWED = {"escalator.kafka.clients": 1}


def test_no_wait_for_that_can_lose_a_cancellation() -> None:
    found = {m: len(calls_in(m, {"wait_for"})) for m in MODULES if m.startswith("escalator.")}
    assert sum(found.values()) >= 1, "the scan saw nothing"
    assert {m: n for m, n in found.items() if n} == WAIT_FOR_ALLOWED


# -- one dead-letter writer --------------------------------------------------------------------
def importers_of(name: str) -> set[str]:
    """Runtime modules that import ``name`` from another module of the package."""
    found = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
                found.add(module)
    return found


def test_dead_letters_are_written_only_by_the_engine() -> None:
    """One dead-letter writer (``engine/dead_letters.py``): the tiers, the lane and the review
    console call it; nothing else builds a dead letter's headers (the review console had its
    own copy before issue 23)."""
    assert importers_of("dead_letter_headers") == {"escalator.engine.dead_letters"}
    callers = importers_of("dead_letter") - {"escalator.engine.dead_letters"}
    assert {"escalator.tiers.handlers", "escalator.review.handler"} <= callers


# -- tests mirror the code ---------------------------------------------------------------------
def mirrored_module(test: Path) -> str:
    """The module ``tests/unit/<folder>/test_<name>.py`` is the test module of:
    ``escalator.<folder>.<name>`` (``tests/unit/dev/`` mirrors ``escalator_dev``)."""
    rel = test.relative_to(ROOT / "tests" / "unit")
    folders = list(rel.parts[:-1])
    top = "escalator"
    if folders[:1] == ["dev"]:
        top, folders = "escalator_dev", folders[1:]
    return ".".join([top, *folders, rel.stem.removeprefix("test_")])


def test_every_unit_test_module_is_named_after_the_module_it_tests() -> None:
    """No test module named after a behaviour or after two modules, none in another folder
    than its module's: ``tests/unit/<folder>/test_<module>.py`` for
    ``service/escalator/<folder>/<module>.py`` (the layout test itself aside)."""
    tests = sorted((ROOT / "tests" / "unit").rglob("test_*.py"))
    assert len(tests) > 50, "the scan saw nothing"
    orphans = [
        t.relative_to(ROOT).as_posix()
        for t in tests
        if t != Path(__file__).resolve() and mirrored_module(t) not in MODULES
    ]
    assert orphans == []


def test_the_mirror_rule_can_fail() -> None:
    unit = ROOT / "tests" / "unit"
    assert mirrored_module(unit / "engine" / "test_worker.py") in MODULES
    assert mirrored_module(unit / "dev" / "emulator" / "test_server.py") in MODULES
    assert mirrored_module(unit / "engine" / "test_worker_shutdown.py") not in MODULES
    assert mirrored_module(unit / "tiers" / "test_worker.py") not in MODULES
