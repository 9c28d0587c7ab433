"""`impetus models list|import|import-gguf|discover|ensure|pull|alias|load|unload|loaded`"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from impetus.cli.output import table_console
from impetus.models import defaults as sampling_defaults
from impetus.models import store
from impetus.models.gguf import GGUFImportError
from impetus.models.registry import AliasError, Registry


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.0f} M"


def run(args, settings) -> None:
    console = Console(stderr=True, soft_wrap=True)
    progress = lambda message: console.print(f"[cyan]•[/] {escape(str(message))}", highlight=False)  # noqa: E731

    def fail(message) -> None:
        console.print(f"[red]error:[/] {message}")
        sys.exit(2)

    registry = Registry(settings.models_dir)
    command = args.models_command
    if command == "list":
        table = Table("name", "parameters", "quantization", "context", "chat", "size", "source", "path")
        for entry in registry.entries():
            try:
                meta = entry.metadata
            except Exception as error:
                table.add_row(entry.name, "?", "?", "?", "?", "?", f"[red]unreadable: {error}[/]", str(entry.path))
                continue
            source = f"alias of {entry.alias_of}" if entry.alias_of else meta.source
            if entry.weights_dtype:
                source += f" ({entry.weights_dtype} weights)"
            if entry.kv_bits:
                source += f" ({entry.kv_bits}-bit KV)"
            table.add_row(entry.name, _params(meta.parameters), meta.quantization, str(meta.context_length or "?"),
                          "yes" if meta.chat_template else "no", _mb(meta.size_bytes), source, str(entry.path))
        table_console().print(table)
    elif command in ("import", "import-gguf"):
        from impetus.models import sources
        from impetus.models.gguf import Options

        if command == "import-gguf" and not Path(args.source).expanduser().is_file():
            fail(f"no such file: {args.source}")
        listing = {"ollama:": sources.ollama_models, "lmstudio:": lambda: [r for r, _ in sources.lmstudio_models()],
                   "hf:": lambda: [r for r, _ in sources.hf_models()]}.get(args.source)
        if listing is not None:  # `impetus models import ollama:` lists what Ollama has
            for reference in listing():
                print(f"{args.source}{reference}")
            return
        try:
            _, path = sources.import_source(args.source, registry, name=args.name, force=args.force, progress=progress,
                                    options=Options(args.bits, args.group_size, args.dtype))
        except (GGUFImportError, AliasError) as error:
            fail(error)
        if args.kv_bits:
            try:
                registry.set_kv_bits(path.name, args.kv_bits, args.kv_group_size)
            except AliasError as error:
                fail(error)
        _audit(settings, "model.imported", path.name, source=args.source, bits=args.bits, dtype=args.dtype,
               kv_bits=args.kv_bits)
        print(path)
    elif command == "discover":
        _discover(args, settings)
    elif command == "ensure":
        try:
            print(registry.find(args.model or settings.model, progress=progress).path)
        except (store.ModelNotFound, GGUFImportError) as error:
            fail(error)
    elif command == "pull":
        from impetus.models.pull import PullError, pull

        try:
            path = pull(args.repo_id, settings.models_dir, name=args.name, revision=args.revision, force=args.force,
                        progress=progress)
            _audit(settings, "model.pulled", Path(path).name, repo=args.repo_id, revision=args.revision)
            print(path)
        except PullError as error:
            fail(error)
    elif command == "alias":
        try:
            template = Path(args.chat_template).read_text() if args.chat_template else None
            if args.remove:
                registry.remove_alias(args.name)
                _audit(settings, "model.alias_removed", args.name)
                progress(f"removed the alias {args.name!r}")
            elif not args.target and template is not None:
                registry.set_chat_template(args.name, template)
                _audit(settings, "model.aliased", args.name, chat_template=args.chat_template)
                progress(f"{args.name} has the chat template from {args.chat_template}")
            elif not args.target:
                fail("give the TARGET model (or --remove, or --chat-template FILE)")
            else:
                sampling = {key: getattr(args, key) for key in sampling_defaults.KEYS}
                entry = registry.add_alias(args.name, args.target, args.weights, chat_template=template,
                                           kv_bits=args.kv_bits, kv_group_size=args.kv_group_size,
                                           sampling=sampling)
                _audit(settings, "model.aliased", entry.name, target=args.target, weights=args.weights,
                       kv_bits=args.kv_bits, sampling=entry.sampling)
                progress(f"{entry.name} -> {entry.alias_of}" + (f" ({entry.weights_dtype} weights)"
                                                                 if entry.weights_dtype else "")
                         + "".join(f", {k} {v}" for k, v in (entry.sampling or {}).items()))
        except (AliasError, store.ModelNotFound, OSError) as error:
            fail(error)
    else:
        _server_command(args, settings, fail)


def _audit(settings, action: str, subject: str, **detail) -> None:
    """Into the stack's audit trail when its Redis runs (these commands also work without it)."""
    from impetus.gateway.audit import AuditEntry, record_from_cli

    record_from_cli(settings.effective_redis_url, AuditEntry(action, subject, detail))


def _discover(args, settings) -> None:
    from impetus.models.loader import choose_weights_dtype
    from impetus.models.sources import discover

    serve_float32 = choose_weights_dtype(settings.weights_dtype) == "float32"
    found = discover(settings.worker_memory_budget(), serve_float32)
    if args.json:
        print(json.dumps([d.as_dict() for d in found], indent=2))
        return
    table = Table("source", "kind", "architecture", "type", "size", "memory", "fits", "path",
                  title=f"importable models (memory budget per worker {_mb(settings.worker_memory_budget())})")
    for d in found:
        table.add_row(d.source, d.kind, d.architecture or "?", d.type or "?", _mb(d.size_bytes),
                      _mb(d.memory_bytes), "yes" if d.fits else "[red]no[/]", d.path)
    table_console().print(table)
    if not found:
        print("nothing found in ~/.ollama/models, ~/.lmstudio/models or ~/.cache/huggingface/hub", file=sys.stderr)


def _server_command(args, settings, fail) -> None:
    """load / unload / loaded: the admin API of a running server."""
    import httpx

    url = (args.url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    key = args.key or os.environ.get("IMPETUS_ADMIN_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        if args.models_command == "loaded":
            response = httpx.get(f"{url}/v1/admin/models", headers=headers, timeout=30)
        else:
            body = {}
            if args.models_command == "load":
                body = {k: v for k, v in (("pin", args.pin), ("keep_alive", args.keep_alive)) if v is not None}
            response = httpx.post(f"{url}/v1/admin/models/{args.model}/{args.models_command}", json=body,
                                  headers=headers, timeout=600)
    except httpx.HTTPError as error:
        fail(f"cannot reach the server at {url} ({error}). Is it running? (--url)")
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        fail(f"{response.status_code}: {message}")
    answer = response.json()
    if args.models_command != "loaded":
        print(json.dumps(answer, indent=2))
        return
    table = Table("model", "memory", "weights", "running", "waiting", "pinned", "keep alive", "idle",
                  title=f"worker {answer['worker_pid']}: {_mb(answer['used_bytes'])} of {_mb(answer['budget_bytes'])}")
    for m in answer["loaded"]:
        table.add_row(m["id"], _mb(m["memory_bytes"]), m["weights_dtype"], str(m["running"]), str(m["waiting"]),
                      "yes" if m["pinned"] else "no", f"{m['keep_alive_s']:.0f} s" if m["keep_alive_s"] else "-",
                      f"{m['idle_s']:.0f} s")
    table_console().print(table)
