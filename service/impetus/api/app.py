"""The app factory: wires settings, engines and resources explicitly."""

from __future__ import annotations

import falcon

from impetus.api.access_log import AccessLogMiddleware
from impetus.api.admin import (
    AdminDiscoverResource,
    AdminFaultResource,
    AdminImportsResource,
    AdminModelLoadResource,
    AdminModelsResource,
    AdminModelUnloadResource,
)
from impetus.api.admin_events import AdminEventsResource
from impetus.api.admin_keys import AdminKeyResource, AdminKeysResource
from impetus.api.batch_runner import BatchRunner
from impetus.api.batches import BatchCancelResource, BatchesResource, BatchResource
from impetus.api.chat import ChatCompletionsResource
from impetus.api.completions import CompletionsResource
from impetus.api.embeddings import EmbeddingsResource
from impetus.api.errors import handle_http_error, handle_unexpected
from impetus.api.files import FileContentResource, FileResource, FilesResource
from impetus.api.health import LivenessResource, ReadinessResource, StatusResource
from impetus.api.infill import InfillResource
from impetus.api.messages import CountTokensResource, MessagesResource
from impetus.api.middleware import JSONBodyMiddleware, RequestIdMiddleware
from impetus.api.models import ModelResource, ModelsResource
from impetus.api.ollama import OllamaChatResource, OllamaGenerateResource
from impetus.api.ollama_catalog import (
    OllamaEmbedResource,
    OllamaPsResource,
    OllamaShowResource,
    OllamaTagsResource,
    OllamaVersionResource,
)
from impetus.api.openapi import OpenAPIResource
from impetus.api.reports import AdminAuditResource, AdminUsageResource, UsageResource
from impetus.api.responses import ResponseInputItemsResource, ResponseResource, ResponsesResource
from impetus.api.transcriptions import TranscriptionsResource
from impetus.api.vector_store_files import (
    FileBatchCancelResource,
    FileBatchesResource,
    FileBatchFilesResource,
    FileBatchResource,
    VectorStoreFileContentResource,
    VectorStoreFileResource,
    VectorStoreFilesResource,
)
from impetus.api.vector_stores import VectorStoreResource, VectorStoreSearchResource, VectorStoresResource
from impetus.documents.service import Documents
from impetus.gateway.account import AccountMiddleware
from impetus.metrics import Metrics
from impetus.metrics.middleware import MetricsMiddleware
from impetus.metrics.resource import MetricsResource
from impetus.speech.host import SpeechHost
from impetus.web import Request


def create_app(settings, host, waker, gateway=None, metrics=None, broadcast=None, embeddings=None) -> falcon.App:
    """`host` holds this process's engines; `waker` wakes greenlets from them;
    `embeddings` holds the embedding models (loaded on first use);
    `gateway` (keys and limits on Redis) is None when keys are not required;
    `metrics` is None when nothing is scraped (tests of the app alone: it
    counts into a null Metrics, and there is no /metrics);
    `broadcast` carries admin model actions to the other workers (with Redis)."""
    scraped = metrics is not None
    metrics = metrics if scraped else Metrics.null()
    middleware = [AccountMiddleware(), MetricsMiddleware(metrics), RequestIdMiddleware(settings.advertise_address),
                  AccessLogMiddleware(settings.log_prompts)]
    if gateway is not None:
        middleware += gateway.guard() + gateway.middleware()  # the guard: before the key is looked at
    middleware.append(JSONBodyMiddleware(settings.max_body_bytes))
    app = falcon.App(middleware=middleware, request_type=Request)
    app.req_options.strip_url_path_trailing_slash = True
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)

    cache = gateway.cache if gateway is not None else None
    if embeddings is None:
        from impetus.embeddings.host import EmbeddingHost

        embeddings = EmbeddingHost(settings)
    speech = SpeechHost(settings)
    responses = gateway.responses if gateway is not None else None
    embedder = EmbeddingsResource(embeddings, host, metrics)
    # Ingestion yields to the chat engines' work (documents.ingest: batch priority).
    documents = Documents(settings, embeddings, busy=lambda: any(e.in_flight for e in list(host.engines.values())),
                          metrics=metrics)
    stores = "/v1/vector_stores/{store_id}"
    # Batches run in every worker's background, through this app (api.batch_runner); they need Redis.
    # A worker takes another chunk of a batch while none of its requests waits for an engine slot;
    # a line for a model that another host of the cluster serves is left to that host.
    runner = BatchRunner(gateway.batches, documents, settings.advertise_address, metrics, settings.batch_concurrency,
                         has_room=lambda: not any(e.stats.waiting for e in list(host.engines.values())),
                         elsewhere=lambda model: any(model in h.models and h.address != settings.advertise_address
                                                     for h in gateway.hosts.hosts())) if gateway else None
    routes = {
        "/v1/chat/completions": ChatCompletionsResource(host, waker, settings, cache, metrics),
        "/v1/completions": CompletionsResource(host, waker, settings, cache, metrics),
        "/infill": InfillResource(host, waker, settings, None, metrics),  # not cached: each keystroke differs
        # Not cached: a Responses object is not replayed from the chat cache's form.
        "/v1/responses": ResponsesResource(host, waker, settings, responses, metrics, documents),
        "/v1/responses/{response_id}": ResponseResource(responses),
        "/v1/responses/{response_id}/input_items": ResponseInputItemsResource(responses),
        "/v1/messages": MessagesResource(host, waker, settings, None, metrics),
        "/v1/messages/count_tokens": CountTokensResource(host, settings),
        "/v1/embeddings": embedder,
        "/v1/audio/transcriptions": TranscriptionsResource(speech, settings, metrics),
        # Documents (impetus.documents): files, vector stores, their files and batches, search
        "/v1/files": FilesResource(documents),
        "/v1/files/{file_id}": FileResource(documents),
        "/v1/files/{file_id}/content": FileContentResource(documents),
        "/v1/batches": BatchesResource(gateway, documents, settings, runner),
        "/v1/batches/{batch_id}": BatchResource(gateway),
        "/v1/batches/{batch_id}/cancel": BatchCancelResource(gateway, runner),
        "/v1/vector_stores": VectorStoresResource(documents, metrics),
        stores: VectorStoreResource(documents),
        f"{stores}/search": VectorStoreSearchResource(documents, metrics),
        f"{stores}/files": VectorStoreFilesResource(documents, metrics),
        f"{stores}/files/{{file_id}}": VectorStoreFileResource(documents),
        f"{stores}/files/{{file_id}}/content": VectorStoreFileContentResource(documents),
        f"{stores}/file_batches": FileBatchesResource(documents, metrics),
        f"{stores}/file_batches/{{batch_id}}": FileBatchResource(documents),
        f"{stores}/file_batches/{{batch_id}}/cancel": FileBatchCancelResource(documents),
        f"{stores}/file_batches/{{batch_id}}/files": FileBatchFilesResource(documents),
        "/v1/models": ModelsResource(host, embeddings, speech),
        "/v1/models/{model_id:path}": ModelResource(host, embeddings, speech),
        "/v1/admin/models": AdminModelsResource(host),
        "/v1/admin/models/discover": AdminDiscoverResource(host),
        "/v1/admin/models/import": AdminImportsResource(host),
        "/v1/admin/models/imports": AdminImportsResource(host),
        "/v1/admin/models/{model_id}/load": AdminModelLoadResource(host, broadcast),
        "/v1/admin/models/{model_id}/unload": AdminModelUnloadResource(host, broadcast),
        "/v1/admin/keys": AdminKeysResource(gateway, settings),
        "/v1/admin/keys/{name}": AdminKeyResource(gateway),
        "/v1/usage": UsageResource(gateway),
        "/v1/admin/usage": AdminUsageResource(gateway),
        "/v1/admin/audit": AdminAuditResource(gateway),
        "/v1/admin/events": AdminEventsResource(host, gateway),
        "/healthz": LivenessResource(settings.stack_id),
        "/": LivenessResource(settings.stack_id),
        "/readyz": ReadinessResource(host, gateway, settings.stack_id),
        "/v1/status": StatusResource(host, gateway),
        "/openapi.json": OpenAPIResource(),
        # Ollama's API, for the apps that speak it (api.ollama, api.ollama_catalog)
        "/api/chat": OllamaChatResource(host, waker, settings, None, metrics),
        "/api/generate": OllamaGenerateResource(host, waker, settings, None, metrics),
        "/api/embed": OllamaEmbedResource(embedder),
        "/api/embeddings": OllamaEmbedResource(embedder, legacy=True),
        "/api/tags": OllamaTagsResource(host, embeddings),
        "/api/ps": OllamaPsResource(host),
        "/api/show": OllamaShowResource(host, settings),
        "/api/version": OllamaVersionResource(),
    }
    if scraped:
        routes["/metrics"] = MetricsResource(settings.data_dir / "run")
    if settings.debug_faults:
        routes["/v1/admin/debug/fault"] = AdminFaultResource(host)
    for path, resource in routes.items():
        app.add_route(path, resource)
    if runner is not None:
        runner.app = app
        runner.start()  # a batch a restart interrupted goes on
    return app
