"""What the server offers and how it stands: GET /v1/models, /healthz,
/readyz and /v1/status (answers only)."""

from __future__ import annotations

from typing import Literal

from impetus.api.schema_base import ResponseModel


class Capabilities(ResponseModel):
    """What a model does, read from its folder (models.metadata)."""

    context_length: int | None = None
    chat: bool = False  # has a chat template
    tools: bool = False  # its template renders tools itself (else they are described in the system message)
    reasoning: Literal["think", "harmony"] | None = None  # <think> blocks or gpt-oss's channels
    fill_in_middle: bool = False
    vision: bool = False
    embeddings: bool = False


class DefaultValue(ResponseModel):
    value: float | int | list[str]
    source: Literal["alias", "ollama", "gguf", "generation_config", "bundled", "model_card",
                    "server"]


class Model(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "impetus"
    # Extensions: a request for a model that is not loaded loads it.
    loaded: bool = False
    pinned: bool = False
    alias_of: str | None = None
    parameters: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    size_bytes: int | None = None
    chat_template: bool | None = None
    source: str | None = None
    memory_bytes: int | None = None
    weights_dtype: str | None = None
    # "chat" (completions and responses), "embedding" (/v1/embeddings) or "transcription"
    type: Literal["chat", "embedding", "transcription"] = "chat"
    input_modalities: list[Literal["text", "image", "audio"]] | None = None
    dimensions: int | None = None
    capabilities: Capabilities | None = None
    # Default sampling parameters, each with where it came from; a request's own values win.
    defaults: dict[Literal["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "stop"],
                   DefaultValue] | None = None


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class Health(ResponseModel):
    status: str
    engines: list[dict] | None = None


class ServerStatus(ResponseModel):
    """GET /v1/status: the answering worker's components."""

    status: str
    uptime_s: float
    worker_pid: int
    versions: dict[str, str | None]
    hardware: dict
    redis: str
    batches: list[dict] = []
    engines: list[dict]
