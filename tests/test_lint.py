"""The code reads clean: ruff's pyflakes rules (unused imports and names,
undefined names) and isort over the service, the tests and the benchmarks,
as configured in pyproject.toml ([tool.ruff]); and the house rules of
docs/architecture.md: rooms of at most 400 lines and classes of at most 300,
layers that only point down, the engine's rooms in their order. Under a
second."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service" / "impetus"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300
# The packages of impetus from the bottom up: each may import only from
# lower ranks (docs/architecture.md). Same rank: not from each other.
LAYERS = (
    ("__init__", "system", "web", "share"),
    ("settings",),
    ("models", "metrics"),
    ("engine",),
    ("embeddings", "gateway", "speech"),
    ("documents",),
    ("api",),
    ("server",),
    ("stack",),
    ("bench",),
    ("cli",),
    ("__main__",),
)
# The engine's rooms from the bottom up, the same way.
ENGINE_ROOMS = (
    ("request", "waiters", "speculative", "spec_cache", "prefix_disk", "kv_quant", "media", "activity"),  # import no other room
    ("structured", "scheduler", "draft", "kv_memory"),
    ("sampling",),
    ("running",),
    ("tokens", "prefixes"),
    ("batch",),
    ("sharing",),
    ("admission", "speculator"),
    ("engine",),
    ("host",),
)


def _modules():
    return sorted(SERVICE.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """The impetus modules a file imports (`from impetus import x` as impetus.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "impetus":
            found.update([f"impetus.{a.name}" for a in node.names] if node.module == "impetus" else [node.module])
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "impetus")
    return found


def _rank(name: str, ranks) -> int:
    return next(i for i, names in enumerate(ranks) if name in names)


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All checks passed" in done.stdout


def test_layers_only_point_down():
    """The gateway, metrics, engine and models never import the API layer;
    what they share with it (APIError, when_sent) lives in impetus.web."""
    service = ROOT / "service" / "impetus"
    upward = [str(path.relative_to(service)) for layer in ("gateway", "metrics", "engine", "models", "embeddings",
                                                           "documents", "system")
              for path in (service / layer).rglob("*.py") if "impetus.api" in path.read_text()]
    assert upward == []


def test_no_room_over_400_lines_and_no_class_over_300():
    long_modules, long_classes = [], []
    for path in _modules():
        text = path.read_text()
        name = str(path.relative_to(SERVICE))
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long_classes.append(f"{name}: {node.name} {node.end_lineno - node.lineno + 1} lines")
    assert long_modules == [] and long_classes == [], (long_modules, long_classes)


def test_packages_import_only_from_lower_layers():
    wrong = []
    for path in _modules():
        own = path.relative_to(SERVICE).parts[0].removesuffix(".py")
        for module in _imports(path):
            other = module.split(".")[1] if "." in module else "__init__"
            if other == "__version__":
                other = "__init__"
            if other != own and _rank(other, LAYERS) >= _rank(own, LAYERS):
                wrong.append(f"{path.relative_to(SERVICE)} imports {module}")
    assert wrong == []


def test_the_engines_rooms_import_only_from_lower_rooms():
    wrong = []
    for path in sorted((SERVICE / "engine").glob("*.py")):
        if path.stem == "__init__":
            continue
        for module in _imports(path):
            if module.startswith("impetus.engine."):
                other = module.split(".")[2]
                if _rank(other, ENGINE_ROOMS) >= _rank(path.stem, ENGINE_ROOMS):
                    wrong.append(f"engine/{path.name} imports {module}")
    assert wrong == []


def test_a_test_with_a_server_of_its_own_says_why():
    """Starting a server costs seconds of the suite's budget: a test module
    that starts one (rather than sharing conftest's) is marked `own_server`
    with its reason."""
    unmarked = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if "node_modules" in path.parts:
            continue
        text = path.read_text()
        starts = "Server(" in text.replace("RedisServer(", "").replace("HTTPServer(", "")
        uses_endpoint = "agent_endpoint(" in text
        if (starts or uses_endpoint) and "own_server(" not in text:
            unmarked.append(str(path.relative_to(ROOT)))
    assert unmarked == []


def test_the_files_that_read_gemma_are_one_xdist_scope():
    """tests/conftest.py runs the files that ask for a Gemma fixture on one
    pytest-xdist worker, so that Gemma is imported once: the list is whole."""
    from conftest import GEMMA_FILES

    asking = re.compile(r"\bgemma_(gguf|models|reference|endpoint)\b")
    found = {path.relative_to(ROOT).as_posix() for path in (ROOT / "tests").rglob("test_*.py")
             if asking.search(path.read_text())}
    assert found == GEMMA_FILES


def test_xdist_hands_out_the_longest_files_first():
    """tests/scheduling.py: scopes by their measured seconds, longest first, a
    scope's tests together and in their order; the table names real files."""
    import json
    from types import SimpleNamespace

    import scheduling

    measured = json.loads(scheduling.MEASURED.read_text())
    assert all((ROOT / path).is_file() for path in measured), "tests/file_seconds.json names a file that is gone"
    short, long, other = sorted(measured, key=measured.get)[0], max(measured, key=measured.get), "tests/test_new.py"
    items = [SimpleNamespace(nodeid=f"{path}::test_{i}") for i, path in enumerate([short, other, long, short, long])]
    scheduling.longest_first(items, lambda path: path)
    assert [item.nodeid for item in items] == [f"{long}::test_2", f"{long}::test_4", f"{other}::test_1",
                                               f"{short}::test_0", f"{short}::test_3"]
