"""The operator's model controls (admin scope when keys are required):

GET  /v1/admin/models                   what this worker has loaded, its budget
POST /v1/admin/models/{model_id}/load   load (and pin / set keep_alive)
POST /v1/admin/models/{model_id}/unload

Each Gunicorn worker keeps its own models. The worker that answers acts and
waits for the result; with Redis (keys required) it also publishes the action,
which the other workers then carry out (`other_workers_told` in the answer).
Without Redis only the answering worker acts.
"""

from __future__ import annotations

import os

from impetus.api.models import model_error
from impetus.api.schemas import AdminLoadRequest
from impetus.api.validation import parse
from impetus.engine.host import ModelNotLoaded


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
        resp.media = {"id": model_id, "unloaded": unloaded, "worker_pid": os.getpid(), "other_workers_told": told}
