"""The operator's model controls (admin scope when keys are required):

GET  /v1/admin/models                   what this worker has loaded, its budget
POST /v1/admin/models/{model_id}/load   load (and pin / set keep_alive)
POST /v1/admin/models/{model_id}/unload
GET  /v1/admin/models/discover          importable models on this machine
POST /v1/admin/models/import            import one in the background
GET  /v1/admin/models/imports           imports and their progress

Each Gunicorn worker keeps its own models. The worker that answers acts and
waits for the result; with Redis (keys required) it also publishes the action,
which the other workers then carry out (`other_workers_told` in the answer).
Without Redis only the answering worker acts.
"""

from __future__ import annotations

import logging
import os

import gevent

from impetus.api.admin_schemas import AdminFaultRequest, AdminImportRequest, AdminLoadRequest
from impetus.api.models import model_error
from impetus.api.validation import parse
from impetus.engine.host import ModelNotLoaded, run_off_the_hub
from impetus.gateway.audit import AuditEntry
from impetus.models import imports
from impetus.web import bad_request

log = logging.getLogger("impetus.api")


def worker_models(host) -> dict:
    return {
        "worker_pid": os.getpid(),
        "budget_bytes": host.budget_bytes,
        "used_bytes": host.memory_used(),
        "loaded": [{"id": name, **slot.describe()} for name, slot in sorted(host.slots.items())],
        "available": [entry.name for entry in host.available()],
        "imports": imports.recent(host.registry.models_dir, within_s=600),
    }


class AdminModelsResource:
    def __init__(self, host):
        self.host = host

    def on_get(self, req, resp):
        resp.media = worker_models(self.host)


def _tell_the_others(broadcast, action: str, model_id: str, **options) -> int | None:
    return broadcast.publish(action, model_id, **options) if broadcast is not None else None


class AdminModelLoadResource:
    def __init__(self, host, broadcast=None):
        self.host = host
        self.broadcast = broadcast

    def on_post(self, req, resp, model_id):
        body = parse(AdminLoadRequest, req.context.json)
        try:
            self.host.load(model_id, pin=body.pin, keep_alive_s=body.keep_alive)
        except Exception as error:
            raise model_error(error, model_id) from error
        told = _tell_the_others(self.broadcast, "load", model_id, pin=body.pin, keep_alive=body.keep_alive)
        req.context.audit = AuditEntry("model.pinned" if body.pin else "model.loaded", model_id,
                                       {"pin": body.pin, "keep_alive": body.keep_alive})
        resp.media = {"id": model_id, **self.host.slots[model_id].describe(), "worker_pid": os.getpid(),
                      "other_workers_told": told}


class AdminModelUnloadResource:
    def __init__(self, host, broadcast=None):
        self.host = host
        self.broadcast = broadcast

    def on_post(self, req, resp, model_id):
        unloaded = True
        try:
            self.host.unload(model_id)
        except ModelNotLoaded as error:
            unloaded = False  # not here; maybe in the other workers
            if self.broadcast is None:
                raise model_error(error, model_id) from error
        except Exception as error:
            raise model_error(error, model_id) from error
        told = _tell_the_others(self.broadcast, "unload", model_id)
        if not unloaded and not told:
            raise model_error(ModelNotLoaded(model_id), model_id)
        req.context.audit = AuditEntry("model.unloaded", model_id)
        resp.media = {"id": model_id, "unloaded": unloaded, "worker_pid": os.getpid(), "other_workers_told": told}


class AdminDiscoverResource:
    """GET /v1/admin/models/discover: models already on this machine (Ollama,
    LM Studio, the Hugging Face cache) that `import` takes."""

    def __init__(self, host):
        self.host = host

    def on_get(self, req, resp):
        from impetus.models.loader import choose_weights_dtype
        from impetus.models.sources import discover

        serve_float32 = choose_weights_dtype(self.host.settings.weights_dtype) == "float32"
        found = run_off_the_hub(lambda: discover(self.host.budget_bytes, serve_float32))
        resp.media = {"object": "list", "data": [d.as_dict() for d in found]}


class AdminImportsResource:
    """GET  /v1/admin/models/imports  imports of the last day, newest first
    POST /v1/admin/models/import   start one in the background (202); its
    progress is in GET .../imports and in the events stream's `imports`."""

    def __init__(self, host):
        self.host = host

    def on_get(self, req, resp):
        resp.media = {"object": "list", "data": imports.recent(self.host.registry.models_dir)}

    def on_post(self, req, resp):
        from impetus.models.gguf import Options
        from impetus.models.sources import SourceError, import_source, resolve

        body = parse(AdminImportRequest, req.context.json)
        try:
            resolved = run_off_the_hub(lambda: resolve(body.source))
        except SourceError as error:
            raise bad_request(str(error), param="source", code="source_not_found") from None
        registry = self.host.registry
        job = imports.ImportJob(imports.jobs_folder(registry.models_dir), body.source, body.name or resolved.name)
        options = Options(body.bits, body.group_size, body.dtype)

        def work():
            try:
                _, path = run_off_the_hub(lambda: import_source(resolved, registry, name=body.name,
                                                                force=body.force, options=options,
                                                                progress=job.progress))
            except Exception as error:  # a failed import is the job's outcome, not the worker's
                log.warning("import of %s failed: %s", body.source, error)
                job.finish(error=error)
            else:
                log.info("imported %s as %s", body.source, job.state["name"])
                job.finish(path=path)

        gevent.spawn(work)
        req.context.audit = AuditEntry("model.import_started", job.state["name"],
                                       {"source": body.source, "bits": body.bits, "dtype": body.dtype})
        resp.status = 202
        resp.media = job.state


class AdminFaultResource:
    """POST /v1/admin/debug/fault: a real fault in a loaded model's engine
    thread, for testing what the worker does then. Routed only with
    IMPETUS_DEBUG_FAULTS=true."""

    def __init__(self, host):
        self.host = host

    def on_post(self, req, resp):
        body = parse(AdminFaultRequest, req.context.json)
        slot = self.host.slots.get(body.model)
        if slot is None:
            raise model_error(ModelNotLoaded(body.model), body.model)
        slot.engine.inject_fault()
        resp.status = 202
        resp.media = {"model": body.model, "worker_pid": os.getpid()}
