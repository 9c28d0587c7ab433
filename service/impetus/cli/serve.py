"""`impetus serve`"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from rich.console import Console

from impetus.models.store import is_model_folder


def _model_ready(settings) -> bool:
    from pathlib import Path

    return is_model_folder(Path(settings.model).expanduser()) or is_model_folder(
        settings.models_dir / settings.model
    )


def run(settings) -> None:
    console = Console(stderr=True, soft_wrap=True)
    if not _model_ready(settings):
        # Import in a child process: the Gunicorn master must not initialise
        # MLX before it forks the workers.
        console.print(f"[bold]preparing model[/] {settings.model}")
        command = [sys.executable, "-m", "impetus", "models", "ensure", settings.model,
                   "--data-dir", str(settings.data_dir)]
        if subprocess.run(command).returncode != 0:
            sys.exit(1)
    # Every worker writes its metrics here; /metrics sums them (multiprocess
    # mode). Set before Gunicorn (and prometheus-client) start; emptied so
    # counters of a previous run are not added in.
    metrics_dir = settings.data_dir / "run" / f"metrics-{settings.port}"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from impetus.server.gunicorn_app import serve
    from impetus.system.blas import blas_in_use

    console.print(
        f"[bold green]impetus[/] serving [bold]{settings.model}[/] on http://{settings.host}:{settings.port} "
        f"with {settings.workers} worker(s); BLAS: {blas_in_use()}"
    )
    serve(settings)
