"""GET /v1/models and GET /v1/models/{model_id}"""

from __future__ import annotations

from impetus.api.errors import APIError


def _model_entry(info, loaded: bool) -> dict:
    return {"id": info.name, "object": "model", "created": info.created, "owned_by": "impetus",
            "loaded": loaded}


class ModelsResource:
    def __init__(self, host):
        self.host = host

    def on_get(self, req, resp):
        resp.media = {
            "object": "list",
            "data": [_model_entry(m, m.name in self.host.engines) for m in self.host.available()],
        }


class ModelResource:
    def __init__(self, host):
        self.host = host

    def on_get(self, req, resp, model_id):
        for info in self.host.available():
            if info.name == model_id:
                resp.media = _model_entry(info, info.name in self.host.engines)
                return
        raise APIError(404, f"The model '{model_id}' does not exist.", param="model",
                       code="model_not_found")
