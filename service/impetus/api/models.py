"""GET /v1/models and GET /v1/models/{model_id}: every model this server can
serve, loaded or not (a request for one that is not loaded loads it)."""

from __future__ import annotations

from impetus.engine import host as engine_host
from impetus.models.defaults import Defaults
from impetus.models.store import ModelNotFound
from impetus.web import APIError


def model_error(error: Exception, model: str) -> APIError:
    """The API's answer when a model cannot be had."""
    if isinstance(error, ModelNotFound):
        hint = (" Models are not downloaded at request time: an operator pulls them with "
                "`impetus models pull`." if "/" in model else "")
        return APIError(404, f"The model '{model}' does not exist. GET /v1/models lists the models.{hint}",
                        param="model", code="model_not_found")
    if isinstance(error, engine_host.ModelNotLoaded):
        return APIError(404, f"The model '{model}' is not loaded in this worker.", param="model",
                        code="model_not_loaded")
    if isinstance(error, engine_host.ModelTooLarge):
        return APIError(507, str(error), type="server_error", param="model", code="model_too_large")
    if isinstance(error, engine_host.NoRoom):
        return APIError(503, str(error), type="server_error", param="model", code="model_capacity",
                        headers={"Retry-After": "10"})
    if isinstance(error, engine_host.ModelBusy):
        return APIError(409, str(error), type="invalid_request_error", param="model", code="model_busy")
    if isinstance(error, engine_host.ModelLoadFailed):
        return APIError(500, str(error), type="server_error", param="model", code="model_load_failed")
    raise error


def alias_targets(host, name: str):
    """What an alias stands for (its target), for a key's allow-list: a key
    allowed a model may use its aliases too. A function: the aliases file is
    read only for a key that has an allow-list."""
    def targets() -> tuple[str, ...]:
        alias = host.registry.aliases().get(name)
        return (alias["target"],) if alias else ()

    return targets


def model_defaults(host, name: str):
    """The model's default sampling parameters (`models.defaults`); none for
    a name the registry does not know (the request's 404 comes later)."""
    try:
        return host.registry.find(name).defaults
    except Exception:
        return Defaults()


def model_entry(entry, slot=None, server_temperature: float | None = None) -> dict:
    described = {
        "id": entry.name, "object": "model", "created": entry.created, "owned_by": "impetus",
        # Extensions, beside OpenAI's fields:
        "type": "chat",
        "loaded": slot is not None,
        "pinned": bool(slot and slot.pinned),
        "alias_of": entry.alias_of,
    }
    try:
        meta = entry.metadata
    except Exception:  # an unreadable folder is listed; loading it says what is wrong
        described["readable"] = False
    else:
        described.update(parameters=meta.parameters, quantization=meta.quantization,
                         context_length=meta.context_length, size_bytes=meta.size_bytes,
                         chat_template=meta.chat_template, source=meta.source,
                         input_modalities=["text", "image"] if meta.vision else ["text"],
                         capabilities=meta.capabilities())
    try:
        described["defaults"] = entry.defaults.describe(server_temperature)
    except Exception:
        described["defaults"] = {}
    if slot is not None:
        described["memory_bytes"] = slot.memory
        described["weights_dtype"] = slot.engine.loaded.weights_dtype
    return described


def embedding_entries(embeddings) -> list[dict]:
    """The embedding models, loaded or not."""
    from impetus.api.embeddings import embedding_entry
    from impetus.embeddings.model import resolve_embedding_model

    return [embedding_entry(name, resolve_embedding_model(name, embeddings.models_dir)[1],
                            embeddings.loaded.get(name)) for name in embeddings.available()]


def speech_entries(speech) -> list[dict]:
    """The speech-to-text models, loaded or not."""
    entries = []
    for name in speech.available():
        model = speech.loaded.get(name)
        entries.append({"id": name, "object": "model", "created": int(speech.folder(name).stat().st_mtime),
                        "owned_by": "impetus", "type": "transcription", "loaded": model is not None,
                        "input_modalities": ["audio"], **({"memory_bytes": model.nbytes} if model else {})})
    return entries


class ModelsResource:
    def __init__(self, host, embeddings, speech):
        self.host = host
        self.embeddings = embeddings
        self.speech = speech

    def on_get(self, req, resp):
        """The models the request's key may use (all of them without keys)."""
        account = req.context.account
        resp.media = {
            "object": "list",
            "data": [model_entry(e, self.host.slots.get(e.name), self.host.settings.default_temperature) for e in self.host.available()
                     if account.allows(e.name, lambda e=e: (e.alias_of,) if e.alias_of else ())]
            + [e for e in embedding_entries(self.embeddings) + speech_entries(self.speech)
               if account.allows(e["id"])],
        }


class ModelResource:
    def __init__(self, host, embeddings, speech):
        self.host = host
        self.embeddings = embeddings
        self.speech = speech

    def on_get(self, req, resp, model_id):
        req.context.account.check_model(model_id, alias_targets(self.host, model_id))
        for entry in self.host.available():
            if entry.name == model_id:
                resp.media = model_entry(entry, self.host.slots.get(entry.name), self.host.settings.default_temperature)
                return
        for entry in embedding_entries(self.embeddings) + speech_entries(self.speech):
            if entry["id"] == model_id:
                resp.media = entry
                return
        raise model_error(ModelNotFound(model_id), model_id)
