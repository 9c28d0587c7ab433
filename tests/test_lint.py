"""The code reads clean: ruff's pyflakes rules (unused imports and names,
undefined names) and isort over the service, the tests and the benchmarks,
as configured in pyproject.toml ([tool.ruff]). Under a second."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
                                                           "system")
              for path in (service / layer).rglob("*.py") if "impetus.api" in path.read_text()]
    assert upward == []
