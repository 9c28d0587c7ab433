"""The operator's model controls (admin scope when keys are required):

GET  /v1/admin/models                   what this worker has loaded, its budget
POST /v1/admin/models/{model_id}/load   load (and pin / set keep_alive)
POST /v1/admin/models/{model_id}/unload

Each Gunicorn worker keeps its own models: these act on the worker that
answers. Requests load models on demand in every worker anyway.
"""

from __future__ import annotations

import os

from impetus.api.models import model_error
from impetus.api.schemas import AdminLoadRequest
from impetus.api.validation import parse


def worker_models(host) -> dict:
    return {
        "worker_pid": os.getpid(),
        "budget_bytes": host.budget_bytes,
        "used_bytes": host.memory_used(),
        "loaded": [{"id": name, **slot.describe()} for name, slot in sorted(host.slots.items())],
        "available": [entry.name for entry in host.available()],
    }


class AdminModelsResource:
    def __init__(self, host):
        self.host = host

    def on_get(self, req, resp):
        resp.media = worker_models(self.host)


class AdminModelLoadResource:
    def __init__(self, host):
        self.host = host

    def on_post(self, req, resp, model_id):
        body = parse(AdminLoadRequest, req.context.json)
        try:
            self.host.load(model_id, pin=body.pin, keep_alive_s=body.keep_alive)
        except Exception as error:
            raise model_error(error, model_id) from error
        resp.media = {"id": model_id, **self.host.slots[model_id].describe()}


class AdminModelUnloadResource:
    def __init__(self, host):
        self.host = host

    def on_post(self, req, resp, model_id):
        try:
            self.host.unload(model_id)
        except Exception as error:
            raise model_error(error, model_id) from error
        resp.media = {"id": model_id, "unloaded": True, "worker_pid": os.getpid()}
