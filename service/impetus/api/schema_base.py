"""What every schema of the API shares: strict requests, open answers, the error shape.

Requests forbid unknown fields, so a typo or an unsupported feature is a 400
naming the field rather than being silently ignored. Fields that OpenAI itself
treats as optional hints (`user`, `metadata`, `service_tier`: `OpenAIHints`;
`store` on chat) are accepted and ignored. Answers allow extra fields (ours, documented as
extensions). Each protocol family has its schemas beside this one:
`chat_schemas` (chat and text completions), `embeddings_schemas`,
`responses_schemas`, `messages_schemas` (Anthropic), `catalog_schemas`
(models, health, status) and `admin_schemas`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


# A request's place in the queue, as vLLM's: lower first; never earlier than its key's priority.
Priority = Annotated[int | None, Field(ge=-100, le=100, description=(
    "Impetus extension (vLLM's): lower is served first; never earlier than the key's priority "
    "(0 interactive, 1 batch)"))]


# OpenAI's sampling bounds: chat, completions and responses take the same.
Temperature = Annotated[float | None, Field(ge=0.0, le=2.0, description=(
    "none: the model's default (GET /v1/models/{id} shows it), else the server's "
    "IMPETUS_DEFAULT_TEMPERATURE (1.0, as OpenAI)"))]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAIHints(RequestModel):
    """OpenAI's optional hints on chat, completions and responses: accepted and ignored."""

    user: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(ResponseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(ResponseModel):
    error: ErrorDetail
