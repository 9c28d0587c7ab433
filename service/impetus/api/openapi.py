"""GET /openapi.json: an OpenAPI 3.1 document generated from the schemas."""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from impetus import __version__
from impetus.api import messages_schemas, responses_schemas, schemas

# (path, method, summary, request schema, response schema, streams)
ROUTES = [
    ("/v1/chat/completions", "post", "Create a chat completion", schemas.ChatCompletionRequest,
     schemas.ChatCompletion, schemas.ChatCompletionChunk),
    ("/v1/completions", "post", "Create a text completion", schemas.CompletionRequest,
     schemas.Completion, schemas.Completion),
    ("/v1/responses", "post", "Create a model response", responses_schemas.ResponsesRequest,
     schemas.ResponseObject, schemas.ResponseEvent),
    ("/v1/responses/{response_id}", "get", "Retrieve a stored response", None, schemas.ResponseObject, None),
    ("/v1/responses/{response_id}", "delete", "Delete a stored response", None, schemas.ResponseDeleted, None),
    ("/v1/messages", "post", "Create a message (Anthropic's Messages API)", messages_schemas.MessagesRequest,
     messages_schemas.MessageResponse, messages_schemas.MessageStreamEvent),
    ("/v1/messages/count_tokens", "post", "Count a message request's input tokens",
     messages_schemas.MessagesCountRequest, messages_schemas.TokenCount, None),
    ("/v1/embeddings", "post", "Create embeddings", schemas.EmbeddingRequest, schemas.EmbeddingList, None),
    ("/v1/models", "get", "List models", None, schemas.ModelList, None),
    ("/v1/models/{model_id}", "get", "Retrieve a model", None, schemas.Model, None),
    ("/v1/admin/models", "get", "This worker's loaded models and memory budget (admin)", None,
     schemas.AdminModels, None),
    ("/v1/admin/models/{model_id}/load", "post", "Load a model, pin it, set its keep-alive (admin)",
     schemas.AdminLoadRequest, schemas.LoadedModelState, None),
    ("/v1/admin/models/{model_id}/unload", "post", "Unload a model (admin)", None, schemas.AdminUnloaded, None),
    ("/healthz", "get", "Liveness", None, schemas.Health, None),
    ("/readyz", "get", "Readiness", None, schemas.Health, None),
]

ERROR_STATUSES = {
    "400": "Invalid request", "401": "No or wrong API key", "403": "The key lacks the admin scope",
    "404": "Not found", "409": "The model is busy", "413": "Body too large", "415": "Not JSON",
    "429": "Over a rate limit", "500": "The model could not be loaded",
    "503": "Overloaded, not ready, or no room for the model",
    "507": "The model exceeds the memory budget",
}


def build_openapi() -> dict:
    models = {schemas.ErrorResponse, messages_schemas.AnthropicError}
    for _, _, _, request, response, chunk in ROUTES:
        models.update(m for m in (request, response, chunk) if m is not None)
    _, top = models_json_schema(
        [(m, "validation" if m.__name__.endswith("Request") else "serialization") for m in
         sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )

    def ref(model):
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    paths: dict = {}
    for path, method, summary, request, response, chunk in ROUTES:
        error = messages_schemas.AnthropicError if path.startswith("/v1/messages") else schemas.ErrorResponse
        ok = {"application/json": {"schema": ref(response)}}
        if chunk is not None:
            ok["text/event-stream"] = {"schema": ref(chunk),
                                       "description": "with stream=true: one event per chunk, then [DONE]"}
        operation = {
            "summary": summary,
            "responses": {
                "200": {"description": "OK", "content": ok},
                **{code: {"description": text, "content": {"application/json": {"schema": ref(error)}}}
                   for code, text in ERROR_STATUSES.items()},
            },
        }
        if request is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": ref(request)}}}
        for name in ("model_id", "response_id"):
            if "{" + name + "}" in path:
                operation["parameters"] = [{"name": name, "in": "path", "required": True,
                                            "schema": {"type": "string"}}]
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Impetus", "version": __version__,
                 "description": "OpenAI-compatible LLM server on MLX"},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {})},
    }


class OpenAPIResource:
    def __init__(self):
        self.document = build_openapi()

    def on_get(self, req, resp):
        resp.media = self.document
