"""Ollama's model routes: /api/tags (every model the key may use), /api/ps
(the loaded ones), /api/show (template, default parameters, capabilities,
context length), /api/version, and /api/embed (and the older
/api/embeddings), over the same registry, defaults and embedding path as
/v1/models and /v1/embeddings.

Names are listed with a tag, as Ollama's are (`smollm2-135m-instruct:latest`);
a client sends them back and `api.ollama.resolve_name` finds the model.
Digests are the folder's revision (its config and weight files), so a
re-import changes it, as a re-pull changes Ollama's.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone

from impetus.api.embeddings_schemas import EmbeddingRequest
from impetus.api.models import alias_targets, embedding_entries, model_error
from impetus.api.ollama import chat_names, resolve_name
from impetus.api.ollama_schemas import OllamaEmbedRequest, OllamaShowRequest
from impetus.api.validation import parse
from impetus.models.metadata import chat_template_text
from impetus.models.store import ModelNotFound
from impetus.web import bad_request

OLLAMA_VERSION = "0.12.0"  # the version of Ollama's API these routes follow
# Impetus's parameter names -> Ollama's (its Modelfile's PARAMETER lines).
_PARAMETERS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
               "repetition_penalty": "repeat_penalty", "stop": "stop"}


def tagged(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def _size(parameters: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if parameters >= scale:
            return f"{parameters / scale:.1f}{unit}".replace(".0", "")
    return str(parameters)


def details(meta) -> dict:
    family = meta.architecture or "unknown"
    return {"parent_model": "", "format": "gguf" if meta.source == "gguf" else "safetensors", "family": family,
            "families": [family], "parameter_size": _size(meta.parameters), "quantization_level": meta.quantization}


def digest(entry) -> str:
    from impetus.models.loader import folder_revision

    return hashlib.sha256(f"{entry.name}:{folder_revision(entry.path)}".encode()).hexdigest()


def capabilities(meta) -> list[str]:
    found = ["completion"]
    found += ["tools"] if meta.tools else []
    found += ["thinking"] if meta.reasoning else []
    found += ["insert"] if meta.fill_in_middle else []
    found += ["vision"] if meta.vision else []
    return found


def _listed(entry) -> dict:
    meta = entry.metadata
    return {"name": tagged(entry.name), "model": tagged(entry.name), "modified_at": _iso(entry.created),
            "size": meta.size_bytes, "digest": digest(entry), "details": details(meta)}


class OllamaTagsResource:
    """GET /api/tags."""

    def __init__(self, host, embeddings):
        self.host, self.embeddings = host, embeddings

    def on_get(self, req, resp):
        account = req.context.account
        models = []
        for entry in self.host.available():
            if account.allows(entry.name, lambda e=entry: (e.alias_of,) if e.alias_of else ()):
                try:
                    models.append(_listed(entry))
                except Exception:  # an unreadable folder: loading it says what is wrong
                    continue
        for entry in embedding_entries(self.embeddings):
            if account.allows(entry["id"]):
                models.append({"name": tagged(entry["id"]), "model": tagged(entry["id"]),
                               "modified_at": _iso(entry["created"]), "size": 0, "digest": hashlib.sha256(
                                   entry["id"].encode()).hexdigest(), "details": {
                                   "parent_model": "", "format": "safetensors", "family": "bert",
                                   "families": ["bert"], "parameter_size": "", "quantization_level": "none"}})
        resp.media = {"models": models}


class OllamaPsResource:
    """GET /api/ps: the models loaded in the answering worker."""

    def __init__(self, host):
        self.host = host

    def on_get(self, req, resp):
        models = []
        for slot in list(self.host.slots.values()):
            # Unified memory: all of it is the GPU's. Pinned, or kept until its room is needed: no expiry.
            expires = None if slot.pinned or slot.keep_alive_s is None else \
                time.time() + slot.keep_alive_s - (time.monotonic() - slot.last_used)
            models.append({**_listed(slot.entry), "size": slot.memory, "size_vram": slot.memory,
                           "expires_at": _iso(expires) if expires is not None else "0001-01-01T00:00:00Z",
                           "context_length": slot.engine.loaded.context_length})
        resp.media = {"models": models}


class OllamaShowResource:
    """POST /api/show."""

    def __init__(self, host, settings):
        self.host, self.settings = host, settings

    def on_post(self, req, resp):
        body = parse(OllamaShowRequest, req.context.json)
        name = body.model or body.name
        if not name:
            raise bad_request("model is required.", param="model")
        name = resolve_name(chat_names(self.host), name)
        req.context.account.check_model(name, alias_targets(self.host, name))
        try:
            entry = self.host.registry.find(name)
            meta = entry.metadata
        except ModelNotFound as error:
            raise model_error(error, name) from None
        defaults = entry.defaults.describe(self.settings.default_temperature)
        lines = []
        for key, shown in defaults.items():
            values = shown["value"] if isinstance(shown["value"], list) else [shown["value"]]
            lines += [f"{_PARAMETERS[key]} {value!r}" if isinstance(value, str) else f"{_PARAMETERS[key]} {value}"
                      for value in values]
        lines.append(f"num_ctx {meta.context_length}")  # Continue reads the context length here
        parameters = "\n".join(line.replace("'", '"') for line in lines)
        arch = meta.architecture or "unknown"
        resp.media = {
            "modelfile": f"FROM {entry.path}\n" + "".join(f"PARAMETER {line}\n" for line in parameters.splitlines()),
            "parameters": parameters,
            # The chat template (Jinja), after the FIM prompt as Ollama writes it (Go), where there is one.
            "template": (meta.fim_template() or "") + (entry.chat_template or chat_template_text(entry.path) or ""),
            "details": details(meta),
            "model_info": {"general.architecture": arch, "general.parameter_count": meta.parameters,
                           f"{arch}.context_length": meta.context_length},
            "capabilities": capabilities(meta),
            "modified_at": _iso(entry.created),
        }


class OllamaVersionResource:
    """GET /api/version (no key needed, as Ollama's)."""

    def on_get(self, req, resp):
        resp.media = {"version": OLLAMA_VERSION}


class OllamaEmbedResource:
    """POST /api/embed (`input`) and the older /api/embeddings (`prompt`, one vector)."""

    def __init__(self, embeddings_resource, legacy: bool = False):
        self.embeddings, self.legacy = embeddings_resource, legacy

    def on_post(self, req, resp):
        body = parse(OllamaEmbedRequest, req.context.json)
        text = body.input if body.input is not None else body.prompt
        if text is None or text == []:
            raise bad_request("input is required.", param="input")
        names = set(self.embeddings.embeddings.available())
        model = resolve_name(names, body.model)
        started = datetime.now(timezone.utc)
        request = parse(EmbeddingRequest, {"model": model, "input": text, "dimensions": body.dimensions})
        found, vectors, prompt_tokens = self.embeddings.compute(req, resp, request)
        if self.legacy:
            resp.media = {"embedding": vectors[0].tolist()}
            return
        took = int((datetime.now(timezone.utc) - started).total_seconds() * 1e9)
        resp.media = {"model": body.model, "embeddings": [v.tolist() for v in vectors], "total_duration": took,
                      "load_duration": 0, "prompt_eval_count": prompt_tokens}
