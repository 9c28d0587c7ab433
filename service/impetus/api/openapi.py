"""GET /openapi.json: an OpenAPI 3.1 document generated from the schemas."""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from impetus import __version__
from impetus.api import (
    admin_schemas,
    batches,
    catalog_schemas,
    chat_schemas,
    documents_schemas,
    embeddings_schemas,
    infill_schemas,
    messages_schemas,
    ollama_schemas,
    responses_schemas,
    schema_base,
    speech_schemas,
)

# (path, method, summary, request schema, response schema, streams)
ROUTES = [
    ("/v1/chat/completions", "post", "Create a chat completion", chat_schemas.ChatCompletionRequest,
     chat_schemas.ChatCompletion, chat_schemas.ChatCompletionChunk),
    ("/v1/completions", "post", "Create a text completion", chat_schemas.CompletionRequest,
     chat_schemas.Completion, chat_schemas.Completion),
    ("/v1/responses", "post", "Create a model response", responses_schemas.ResponsesRequest,
     responses_schemas.ResponseObject, responses_schemas.ResponseEvent),
    ("/v1/responses/{response_id}", "get", "Retrieve a stored response", None, responses_schemas.ResponseObject, None),
    ("/v1/responses/{response_id}", "delete", "Delete a stored response", None, responses_schemas.ResponseDeleted, None),
    ("/v1/responses/{response_id}/input_items", "get", "The input items of a stored response", None,
     responses_schemas.ResponseInputItemList, None),
    ("/v1/messages", "post", "Create a message (Anthropic's Messages API)", messages_schemas.MessagesRequest,
     messages_schemas.MessageResponse, messages_schemas.MessageStreamEvent),
    ("/v1/messages/count_tokens", "post", "Count a message request's input tokens",
     messages_schemas.MessagesCountRequest, messages_schemas.TokenCount, None),
    ("/infill", "post", "Fill in the middle (llama.cpp's route, for editors' autocomplete)",
     infill_schemas.InfillRequest, infill_schemas.InfillResponse, infill_schemas.InfillResponse),
    ("/v1/embeddings", "post", "Create embeddings", embeddings_schemas.EmbeddingRequest, embeddings_schemas.EmbeddingList, None),
    ("/v1/audio/transcriptions", "post", "Transcribe a recording (text, srt and vtt answer text/plain)",
     speech_schemas.TranscriptionRequest, speech_schemas.Transcription, None),
    ("/v1/files", "post", "Upload a file (a form: file, purpose, expires_after)", documents_schemas.FileUploadRequest,
     documents_schemas.FileObject, None),
    ("/v1/files", "get", "The key's files", None, documents_schemas.FileList, None),
    ("/v1/files/{file_id}", "get", "Retrieve a file", None, documents_schemas.FileObject, None),
    ("/v1/files/{file_id}", "delete", "Delete a file (and its chunks in every store)", None, documents_schemas.Deleted, None),
    ("/v1/files/{file_id}/content", "get", "A file's bytes", None, "application/octet-stream", None),
    ("/v1/batches", "post", "Create a batch from a JSONL file (purpose batch)", batches.BatchCreate,
     batches.BatchObject, None),
    ("/v1/batches", "get", "The key's batches, newest first", None, batches.BatchList, None),
    ("/v1/batches/{batch_id}", "get", "Retrieve a batch", None, batches.BatchObject, None),
    ("/v1/batches/{batch_id}/cancel", "post", "Cancel a batch (what was done is kept)", None, batches.BatchObject,
     None),
    ("/v1/vector_stores", "post", "Create a vector store", documents_schemas.VectorStoreCreate, documents_schemas.VectorStoreObject, None),
    ("/v1/vector_stores", "get", "The key's vector stores", None, documents_schemas.VectorStoreList, None),
    ("/v1/vector_stores/{store_id}", "get", "Retrieve a vector store", None, documents_schemas.VectorStoreObject, None),
    ("/v1/vector_stores/{store_id}", "post", "Change a vector store", documents_schemas.VectorStoreUpdate,
     documents_schemas.VectorStoreObject, None),
    ("/v1/vector_stores/{store_id}", "delete", "Delete a vector store", None, documents_schemas.Deleted, None),
    ("/v1/vector_stores/{store_id}/search", "post", "Search a vector store (vectors and BM25, fused)",
     documents_schemas.VectorStoreSearch, documents_schemas.SearchResultsPage, None),
    ("/v1/vector_stores/{store_id}/files", "post", "Add a file to a vector store", documents_schemas.VectorStoreFileCreate,
     documents_schemas.VectorStoreFileObject, None),
    ("/v1/vector_stores/{store_id}/files", "get", "A vector store's files", None, documents_schemas.VectorStoreFileList, None),
    ("/v1/vector_stores/{store_id}/files/{file_id}", "get", "A file in a vector store", None,
     documents_schemas.VectorStoreFileObject, None),
    ("/v1/vector_stores/{store_id}/files/{file_id}", "post", "Change a file's attributes",
     documents_schemas.VectorStoreFileUpdate, documents_schemas.VectorStoreFileObject, None),
    ("/v1/vector_stores/{store_id}/files/{file_id}", "delete", "Remove a file from a vector store", None,
     documents_schemas.Deleted, None),
    ("/v1/vector_stores/{store_id}/files/{file_id}/content", "get", "A file's chunks in a vector store", None,
     documents_schemas.FileContentPage, None),
    ("/v1/vector_stores/{store_id}/file_batches", "post", "Add files to a vector store together",
     documents_schemas.FileBatchCreate, documents_schemas.FileBatchObject, None),
    ("/v1/vector_stores/{store_id}/file_batches/{batch_id}", "get", "A file batch", None, documents_schemas.FileBatchObject,
     None),
    ("/v1/vector_stores/{store_id}/file_batches/{batch_id}/cancel", "post", "Cancel a file batch", None,
     documents_schemas.FileBatchObject, None),
    ("/v1/vector_stores/{store_id}/file_batches/{batch_id}/files", "get", "A file batch's files", None,
     documents_schemas.VectorStoreFileList, None),
    ("/v1/models", "get", "List models", None, catalog_schemas.ModelList, None),
    ("/v1/models/{model_id}", "get", "Retrieve a model", None, catalog_schemas.Model, None),
    ("/v1/admin/models", "get", "This worker's loaded models and memory budget (admin)", None,
     admin_schemas.AdminModels, None),
    ("/v1/admin/models/{model_id}/load", "post", "Load a model, pin it, set its keep-alive (admin)",
     admin_schemas.AdminLoadRequest, admin_schemas.LoadedModelState, None),
    ("/v1/admin/models/{model_id}/unload", "post", "Unload a model (admin)", None, admin_schemas.AdminUnloaded, None),
    ("/v1/admin/models/discover", "get", "Models found on this machine that can be imported (admin)", None,
     admin_schemas.DiscoveredModels, None),
    ("/v1/admin/models/import", "post", "Import a model in the background (admin); answers 202", admin_schemas.AdminImportRequest,
     admin_schemas.ImportJobState, None),
    ("/v1/admin/models/imports", "get", "Imports and their progress (admin)", None, admin_schemas.ImportJobList, None),
    ("/v1/admin/keys", "get", "Every API key with its limits and usage (admin)", None, admin_schemas.AdminKeyList, None),
    ("/v1/admin/keys", "post", "Make a key; the key is in this answer only (admin)", admin_schemas.AdminKeyCreate,
     admin_schemas.AdminKeyCreated, None),
    ("/v1/admin/keys/{name}", "patch", "Change a key's limits, share, priority, models or budget (admin)",
     admin_schemas.AdminKeyUpdate, admin_schemas.AdminKey, None),
    ("/v1/admin/keys/{name}", "delete", "Revoke a key at once (admin)", None, admin_schemas.AdminKeyRevoked, None),
    ("/v1/admin/events", "get", "Live figures and model events as server-sent events (admin)", None,
     None, admin_schemas.AdminEvent),
    ("/v1/admin/usage", "get", "Usage per day, key and model (admin)", None, admin_schemas.UsageReport, None),
    ("/v1/admin/audit", "get", "The audit trail of admin actions, newest first (admin)", None,
     admin_schemas.AuditList, None),
    ("/v1/usage", "get", "The calling key's own usage and budget", None, admin_schemas.UsageReport, None),
    ("/v1/status", "get", "Versions, hardware, Redis and engines of the answering worker (admin)", None,
     catalog_schemas.ServerStatus, None),
    ("/metrics", "get", "Prometheus metrics, summed over every worker (loopback, IMPETUS_ADMIN_ALLOW or admin)",
     None, "text/plain", None),
    ("/api/chat", "post", "Ollama's chat (NDJSON unless stream is false)", ollama_schemas.OllamaChatRequest,
     ollama_schemas.OllamaChatResponse, ollama_schemas.OllamaChatResponse),
    ("/api/generate", "post", "Ollama's generate: a prompt, raw, or fill in the middle with suffix",
     ollama_schemas.OllamaGenerateRequest, ollama_schemas.OllamaGenerateResponse,
     ollama_schemas.OllamaGenerateResponse),
    ("/api/embed", "post", "Ollama's embeddings", ollama_schemas.OllamaEmbedRequest,
     ollama_schemas.OllamaEmbedResponse, None),
    ("/api/embeddings", "post", "Ollama's older embeddings route (one prompt)", ollama_schemas.OllamaEmbedRequest,
     ollama_schemas.OllamaEmbedResponse, None),
    ("/api/tags", "get", "Ollama's model list", None, ollama_schemas.OllamaModelList, None),
    ("/api/ps", "get", "Ollama's loaded models", None, ollama_schemas.OllamaModelList, None),
    ("/api/show", "post", "Ollama's model details", ollama_schemas.OllamaShowRequest,
     ollama_schemas.OllamaShowResponse, None),
    ("/api/version", "get", "The Ollama API version these routes follow", None, ollama_schemas.OllamaVersion, None),
    ("/healthz", "get", "Liveness", None, catalog_schemas.Health, None),
    ("/readyz", "get", "Readiness", None, catalog_schemas.Health, None),
]

_USAGE_QUERY = [("since", "string", "first day, YYYY-MM-DD (default: 30 days ago)"),
                ("until", "string", "last day, YYYY-MM-DD (default: today)")]
QUERY_PARAMETERS = {
    "/v1/usage": _USAGE_QUERY,
    "/v1/admin/usage": [*_USAGE_QUERY, ("key", "string", "one key's name")],
    "/v1/admin/audit": [("limit", "integer", "newest entries, 1-1000 (default 100)"),
                        ("action", "string", "only actions starting with this, e.g. key."),
                        ("who", "string", "only this key name, or cli:USER")],
}

_LIST_QUERY = [("limit", "integer", "1-100 (default 20; files 100)"), ("order", "string", "asc or desc (default)"),
               ("after", "string", "the id the page starts after"), ("before", "string", "the id the page ends before")]
for _path, _extra in (("/v1/files", [("purpose", "string", "only files of this purpose")]), ("/v1/vector_stores", []),
                      ("/v1/vector_stores/{store_id}/files", [("filter", "string", "only files of this status")]),
                      ("/v1/vector_stores/{store_id}/file_batches/{batch_id}/files",
                       [("filter", "string", "only files of this status")])):
    QUERY_PARAMETERS[_path] = _LIST_QUERY[:3] + _extra if _path == "/v1/files" else _LIST_QUERY + _extra
QUERY_PARAMETERS["/v1/batches"] = _LIST_QUERY[:3]

FORMS = {"/v1/audio/transcriptions", "/v1/files"}  # a multipart form, not JSON

ERROR_STATUSES = {
    "400": "Invalid request", "401": "No or wrong API key", "403": "The key lacks the admin scope, or may not use the model",
    "404": "Not found", "409": "The model is busy", "413": "Body too large", "415": "Not JSON",
    "429": "Over a rate limit or the key's budget", "431": "A request header too large (nginx)", "500": "The model could not be loaded",
    "503": "Overloaded, not ready, or no room for the model",
    "507": "The model exceeds the memory budget",
}


def build_openapi() -> dict:
    models = {schema_base.ErrorResponse, messages_schemas.AnthropicError}
    for path, _, _, request, response, chunk in ROUTES:
        models.update(m for m in (request, response, chunk) if isinstance(m, type))
        if path.startswith("/api/"):
            models.add(ollama_schemas.OllamaError)
    _, top = models_json_schema(
        [(m, "validation" if m.__name__.endswith("Request") else "serialization") for m in
         sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )

    def ref(model):
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    paths: dict = {}
    for path, method, summary, request, response, chunk in ROUTES:
        error = (messages_schemas.AnthropicError if path.startswith("/v1/messages") else
                 ollama_schemas.OllamaError if path.startswith("/api/") else schema_base.ErrorResponse)
        if response == "text/plain":
            ok = {"text/plain": {"schema": {"type": "string"},
                                 "description": "Prometheus' text exposition format"}}
        elif response == "application/octet-stream":
            ok = {response: {"schema": {"type": "string", "format": "binary"}}}
        elif response is None:
            ok = {}
        else:
            ok = {"application/json": {"schema": ref(response)}}
        if chunk is not None and path.startswith("/api/"):
            ok["application/x-ndjson"] = {"schema": ref(chunk), "description": "one JSON object a line"}
        elif chunk is not None:
            ok["text/event-stream"] = {"schema": ref(chunk), "description": (
                "with stream=true: one event per chunk, then [DONE]" if response is not None else
                "server-sent events until the client leaves")}
        operation = {
            "summary": summary,
            "responses": {
                "200": {"description": "OK", "content": ok},
                **{code: {"description": text, "content": {"application/json": {"schema": ref(error)}}}
                   for code, text in ERROR_STATUSES.items()},
            },
        }
        if request is not None:
            kind = "multipart/form-data" if path in FORMS else "application/json"
            operation["requestBody"] = {"required": True, "content": {kind: {"schema": ref(request)}}}
        for name in ("model_id", "response_id", "name", "store_id", "file_id", "batch_id"):
            if "{" + name + "}" in path:
                operation.setdefault("parameters", []).append({"name": name, "in": "path", "required": True,
                                                               "schema": {"type": "string"}})
        query = QUERY_PARAMETERS.get(path)
        if query:
            operation.setdefault("parameters", []).extend(
                {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": text}
                for name, kind, text in query)
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
