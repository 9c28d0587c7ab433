"""Where a team's models already are, and how `impetus models import SOURCE`
reads them.

SOURCE is one of:
- a path: a GGUF file (converted), or an MLX folder (served in place);
- `ollama:NAME[:TAG]`: Ollama's store, `$OLLAMA_MODELS` or ~/.ollama/models.
  The manifest `manifests/registry.ollama.ai/library/NAME/TAG` (or
  `.../NAMESPACE/NAME/TAG`) names its layers; the one of media type
  `application/vnd.ollama.image.model` is the GGUF, in `blobs/sha256-<hex>`.
  Ollama's `template` layer is a Go template, not Jinja: the GGUF's own
  `tokenizer.chat_template` is used, and its absence is said;
- `lmstudio:PUBLISHER/REPO[/FILE.gguf]`: ~/.lmstudio/models (or the older
  ~/.cache/lm-studio/models): GGUF files are converted, MLX folders served in place;
- `hf:OWNER/NAME`: an MLX model in the Hugging Face cache
  (`$HF_HUB_CACHE`, `$HF_HOME/hub` or ~/.cache/huggingface/hub), served in place.

Models served in place become aliases of their folder: nothing is copied.
`discover()` lists what all four places hold, reading only the first bytes
of each GGUF (a 262k-token vocabulary takes gguf-py 8 s to parse in full).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from impetus.models.gguf.reader import GGUFImportError
from impetus.models.gguf.summary import gguf_summary
from impetus.models.store import is_model_folder

OLLAMA_REGISTRY = "registry.ollama.ai"
OLLAMA_MODEL_MEDIA = "application/vnd.ollama.image.model"
OLLAMA_PARAMS_MEDIA = "application/vnd.ollama.image.params"  # the Modelfile's PARAMETERs, as JSON


class SourceError(GGUFImportError):
    """A SOURCE that names nothing importable; the message says what is there."""


@dataclass(frozen=True)
class Resolved:
    """What a SOURCE points at: a GGUF to convert or an MLX folder to serve in place."""

    source: str
    kind: str  # "gguf" or "mlx"
    path: Path
    name: str  # the model name it is imported under, unless --name
    note: str | None = None  # something the user should know (no chat template...)
    sampling: dict | None = None  # source -> default sampling parameters it sets (models.defaults)


def home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def ollama_root() -> Path:
    return Path(os.environ["OLLAMA_MODELS"]) if os.environ.get("OLLAMA_MODELS") else home() / ".ollama" / "models"


def lmstudio_roots() -> list[Path]:
    return [home() / ".lmstudio" / "models", home() / ".cache" / "lm-studio" / "models"]


def hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return home() / ".cache" / "huggingface" / "hub"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._:-]+", "-", text).strip("-")[:128] or "model"


# -- Ollama ------------------------------------------------------------------------------


def _ollama_manifest(name: str, tag: str) -> Path:
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["library", *parts]
    return ollama_root() / "manifests" / OLLAMA_REGISTRY / Path(*parts) / tag


def ollama_models() -> list[str]:
    """Every NAME:TAG in Ollama's store ('library/' left out, as `ollama list` does)."""
    base = ollama_root() / "manifests" / OLLAMA_REGISTRY
    if not base.is_dir():
        return []
    found = []
    for manifest in sorted(p for p in base.rglob("*") if p.is_file()):
        parts = manifest.relative_to(base).parts
        name = "/".join(parts[1:-1]) if parts[0] == "library" else "/".join(parts[:-1])
        found.append(f"{name}:{parts[-1]}")
    return found


def ollama_blob(reference: str) -> tuple[str, str, Path]:
    """(NAME, TAG, the GGUF blob) of an Ollama model, checked against its manifest."""
    name, tag, blob, _ = _ollama_layers(reference)
    return name, tag, blob


def _ollama_layers(reference: str) -> tuple[str, str, Path, dict]:
    """ollama_blob's, and the sampling parameters of the params layer ({} without one)."""
    name, _, tag = reference.partition(":")
    tag = tag or "latest"
    manifest = _ollama_manifest(name, tag)
    if not manifest.is_file():
        there = ", ".join(ollama_models()) or "none"
        raise SourceError(f"Ollama has no model {name}:{tag} in {ollama_root()} (there: {there})")
    try:
        layers = json.loads(manifest.read_text())["layers"]
        layer = next(layer for layer in layers if layer.get("mediaType") == OLLAMA_MODEL_MEDIA)
        algorithm, _, digest = layer["digest"].partition(":")
    except (ValueError, KeyError, TypeError, StopIteration, AttributeError):
        raise SourceError(f"the Ollama manifest {manifest} is damaged: no layer of type {OLLAMA_MODEL_MEDIA} "
                          "with a digest") from None
    blob = ollama_root() / "blobs" / f"{algorithm}-{digest}"
    if not blob.is_file():
        raise SourceError(f"the Ollama model {name}:{tag} names the blob {blob.name}, which is missing from "
                          f"{blob.parent} (re-pull it with `ollama pull {name}:{tag}`)")
    if layer.get("size") is not None and blob.stat().st_size != layer["size"]:
        raise SourceError(f"the Ollama blob {blob.name} is {blob.stat().st_size:,} bytes, the manifest says "
                          f"{layer['size']:,}: it is incomplete")
    return name, tag, blob, _ollama_params(layers)


def _ollama_params(layers: list) -> dict:
    """The params layer's sampling parameters; {} when it has none or cannot be read."""
    from impetus.models.defaults import ollama_params

    for layer in layers:
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_PARAMS_MEDIA:
            algorithm, _, digest = str(layer.get("digest", "")).partition(":")
            try:
                return ollama_params(json.loads((ollama_root() / "blobs" / f"{algorithm}-{digest}").read_text()))
            except (OSError, ValueError, AttributeError):
                return {}
    return {}


def resolve_ollama(reference: str) -> Resolved:
    name, tag, blob, params = _ollama_layers(reference)
    template_note = None
    if not gguf_summary(blob).get("chat_template"):
        template_note = ("this GGUF has no tokenizer.chat_template, and Ollama's own template is a Go "
                         "template, not Jinja: /v1/chat/completions will refuse it until you attach one "
                         "(impetus models alias NAME --chat-template FILE); /v1/completions works")
    model_name = safe_name(f"{name.rsplit('/', 1)[-1]}:{tag}" if tag != "latest" else name.rsplit("/", 1)[-1])
    return Resolved(f"ollama:{name}:{tag}", "gguf", blob, model_name, template_note,
                    {"ollama": params} if params else None)


# -- LM Studio ---------------------------------------------------------------------------


def lmstudio_models() -> list[tuple[str, Path]]:
    """(PUBLISHER/REPO[/FILE], path) for each GGUF file and MLX folder."""
    found = []
    for root in lmstudio_roots():
        if not root.is_dir():
            continue
        for repo in sorted(p for p in root.glob("*/*") if p.is_dir()):
            ref = f"{repo.parent.name}/{repo.name}"
            if is_model_folder(repo):
                found.append((ref, repo))
            ggufs = sorted(repo.glob("*.gguf"))
            for gguf in ggufs:
                found.append((f"{ref}/{gguf.name}" if len(ggufs) > 1 else ref, gguf))
    return found


def resolve_lmstudio(reference: str) -> Resolved:
    parts = reference.strip("/").split("/")
    if len(parts) not in (2, 3):
        raise SourceError("an LM Studio source is lmstudio:PUBLISHER/REPO or lmstudio:PUBLISHER/REPO/FILE.gguf")
    for root in lmstudio_roots():
        repo = root / parts[0] / parts[1]
        if not repo.is_dir():
            continue
        if len(parts) == 3:
            file = repo / parts[2]
            if not file.is_file():
                raise SourceError(f"{file} does not exist")
            return Resolved(f"lmstudio:{reference}", "gguf", file, safe_name(file.name.removesuffix(".gguf")))
        if is_model_folder(repo):
            return Resolved(f"lmstudio:{reference}", "mlx", repo, safe_name(parts[1]))
        ggufs = sorted(repo.glob("*.gguf"))
        if len(ggufs) == 1:
            return Resolved(f"lmstudio:{reference}", "gguf", ggufs[0], safe_name(parts[1]))
        if len(ggufs) > 1:
            raise SourceError(f"{repo} holds several GGUF files: name one, "
                              + ", ".join(f"lmstudio:{reference}/{g.name}" for g in ggufs))
        raise SourceError(f"{repo} holds no GGUF file and no MLX model")
    there = ", ".join(ref for ref, _ in lmstudio_models()) or "none"
    raise SourceError(f"LM Studio has no {reference} in {lmstudio_roots()[0]} (there: {there})")


# -- the Hugging Face cache --------------------------------------------------------------


def hf_models() -> list[tuple[str, Path]]:
    """(OWNER/NAME, snapshot folder) for each cached repository holding an MLX model."""
    found = []
    cache = hf_cache()
    if not cache.is_dir():
        return []
    for repo in sorted(cache.glob("models--*--*")):
        snapshot = _latest_snapshot(repo)
        if snapshot is not None and is_model_folder(snapshot):
            owner, _, name = repo.name.removeprefix("models--").partition("--")
            found.append((f"{owner}/{name}", snapshot))
    return found


def _latest_snapshot(repo: Path) -> Path | None:
    ref = repo / "refs" / "main"
    pointed = repo / "snapshots" / ref.read_text().strip() if ref.is_file() else None
    if pointed is not None and pointed.is_dir():
        return pointed
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def resolve_hf(reference: str) -> Resolved:
    for ref, snapshot in hf_models():
        if ref == reference:
            return Resolved(f"hf:{ref}", "mlx", snapshot, safe_name(ref.split("/")[-1]))
    there = ", ".join(ref for ref, _ in hf_models()) or "none"
    raise SourceError(f"the Hugging Face cache {hf_cache()} has no MLX model {reference} (there: {there})")


# -- any SOURCE --------------------------------------------------------------------------


def resolve(source: str) -> Resolved:
    scheme, sep, rest = source.partition(":")
    if sep and scheme == "ollama":
        return resolve_ollama(rest)
    if sep and scheme == "lmstudio":
        return resolve_lmstudio(rest)
    if sep and scheme == "hf":
        return resolve_hf(rest)
    path = Path(source).expanduser()
    if path.is_file():
        from impetus.models.gguf import default_model_name

        return Resolved(str(path), "gguf", path.resolve(), default_model_name(path))
    if path.is_dir() and is_model_folder(path):
        return Resolved(str(path), "mlx", path.resolve(), safe_name(path.name))
    if path.exists():
        raise SourceError(f"{path} is neither a GGUF file nor an MLX model folder")
    raise SourceError(f"no such file or folder: {source} (sources: a path, ollama:NAME[:TAG], "
                      "lmstudio:PUBLISHER/REPO, hf:OWNER/NAME)")


def import_source(source: str | Resolved, registry, name: str | None = None, force: bool = False, options=None,
                  progress=lambda update: None) -> tuple[Resolved, Path]:
    """Import SOURCE (or what `resolve` made of it) into the registry's data
    dir: a GGUF is converted, an MLX folder becomes an alias of itself (served
    in place, nothing copied)."""
    from impetus.models.gguf import Options, import_gguf
    from impetus.models.gguf.convert import ImportProgress
    from impetus.models.registry import AliasError

    resolved = source if isinstance(source, Resolved) else resolve(source)
    name = name or resolved.name
    if resolved.note:
        progress(ImportProgress("note", f"note: {resolved.note}"))
    if resolved.kind == "gguf":
        target = import_gguf(resolved.path, registry.models_dir, name=name, progress=progress, overwrite=force,
                             options=options or Options(), display_source=resolved.source,
                             sampling=resolved.sampling)
        return resolved, target
    existing = registry.aliases().get(name)
    if existing is not None and Path(existing["target"]) == resolved.path and not force:
        progress(ImportProgress("skipped", f"{name} already serves {resolved.path}"))
        return resolved, resolved.path
    try:
        registry.add_alias(name, str(resolved.path), replace=force)
    except AliasError as error:
        raise SourceError(f"{error} (--force replaces it)" if "already" in str(error) else str(error)) from None
    progress(ImportProgress("done", f"{name} serves {resolved.path} in place"))
    return resolved, resolved.path


# -- discovery ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Discovered:
    source: str  # what `impetus models import` takes
    place: str  # "ollama", "lmstudio", "hf"
    kind: str  # "gguf" or "mlx"
    path: str
    size_bytes: int
    architecture: str | None
    type: str | None  # "Q4_K_M", "4-bit"...
    memory_bytes: int  # weights once loaded, as this server would serve them
    fits: bool  # within one worker's memory budget

    def as_dict(self) -> dict:
        return asdict(self)


def discover(budget_bytes: int, serve_float32: bool) -> list[Discovered]:
    found = []
    for name in ollama_models():
        try:
            _, _, blob = ollama_blob(name)  # not resolve_ollama: _describe reads the header once
        except SourceError:
            continue
        found.append(_describe(f"ollama:{name}", "ollama", "gguf", blob, budget_bytes, serve_float32))
    for ref, path in lmstudio_models():
        found.append(_describe(f"lmstudio:{ref}", "lmstudio", "mlx" if path.is_dir() else "gguf", path,
                               budget_bytes, serve_float32))
    for ref, path in hf_models():
        found.append(_describe(f"hf:{ref}", "hf", "mlx", path, budget_bytes, serve_float32))
    return found


def _describe(source, place, kind, path: Path, budget: int, serve_float32: bool) -> Discovered:
    if kind == "gguf":
        summary = gguf_summary(path)
        size = path.stat().st_size
        bits = summary.get("bits") or 16
        memory = int(size * 32 / bits) if serve_float32 else size
        return Discovered(source, place, kind, str(path), size, summary.get("architecture"),
                          summary.get("type"), memory, memory <= budget)
    from impetus.models.metadata import read_metadata

    meta = read_metadata(path)
    memory = meta.memory_estimate("float32" if serve_float32 else "stored")
    return Discovered(source, place, kind, str(path), meta.size_bytes, meta.architecture, meta.quantization,
                      memory, memory <= budget)
