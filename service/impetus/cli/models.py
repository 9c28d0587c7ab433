"""`impetus models list|import-gguf|ensure`"""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from impetus.cli.output import table_console
from impetus.models import store
from impetus.models.gguf import GGUFImportError, import_gguf


def _size(path) -> str:
    total = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return f"{total / 1e6:.0f} MB"


def run(args, settings) -> None:
    console = Console(stderr=True, soft_wrap=True)
    progress = lambda message: console.print(f"[cyan]•[/] {message}")  # noqa: E731
    if args.models_command == "list":
        table = Table("name", "size", "quantization", "context", "path")
        for info in store.list_models(settings.models_dir):
            config = json.loads((info.path / "config.json").read_text())
            quant = config.get("quantization")
            table.add_row(info.name, _size(info.path), f"{quant['bits']}-bit" if quant else "none",
                          str(config.get("max_position_embeddings", "?")), str(info.path))
        table_console().print(table)
    elif args.models_command == "import-gguf":
        try:
            path = import_gguf(args.path, settings.models_dir, name=args.name, progress=progress,
                               overwrite=args.force)
        except GGUFImportError as error:
            console.print(f"[red]error:[/] {error}")
            sys.exit(2)
        print(path)
    elif args.models_command == "ensure":
        try:
            path = store.resolve_model(args.model or settings.model, settings.models_dir, progress=progress)
        except (store.ModelNotFound, GGUFImportError) as error:
            console.print(f"[red]error:[/] {error}")
            sys.exit(2)
        print(path)
