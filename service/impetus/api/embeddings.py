"""POST /v1/embeddings"""

from __future__ import annotations

import base64

from impetus.api.embeddings_schemas import EmbeddingRequest
from impetus.api.validation import parse
from impetus.embeddings.model import DEFAULT_EMBEDDING_MODEL, EmbeddingModelNotFound
from impetus.web import APIError, bad_request


def embedding_entry(name: str, folder, model=None) -> dict:
    """A /v1/models entry for an embedding model; `model` when it is loaded."""
    entry = {"id": name, "object": "model", "created": int(folder.stat().st_mtime), "owned_by": "impetus",
             "type": "embedding", "loaded": model is not None, "input_modalities": ["text"]}
    if model is not None:
        entry.update(dimensions=model.dimensions, context_length=model.max_tokens, memory_bytes=model.nbytes)
    entry["capabilities"] = {"context_length": entry.get("context_length"), "chat": False, "tools": False,
                             "reasoning": None, "fill_in_middle": False, "vision": False, "embeddings": True}
    return entry


class EmbeddingsResource:
    def __init__(self, embeddings, host, metrics=None):
        self.embeddings = embeddings
        self.host = host  # the chat models: to say so when one is asked for embeddings
        self.metrics = metrics

    def on_post(self, req, resp):
        body = parse(EmbeddingRequest, req.context.json)
        model, vectors, prompt_tokens = self.compute(req, resp, body)
        if body.encoding_format == "base64":
            encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            encoded = [v.tolist() for v in vectors]
        resp.media = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": model.name,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    def compute(self, req, resp, body: EmbeddingRequest):
        """(the model, one vector per input, prompt tokens): the key's model
        check, admission, charge and metrics, for every face (Ollama's too)."""
        account = req.context.account
        account.check_model(body.model)
        model = self._model(body.model)
        if body.dimensions is not None and body.dimensions != model.dimensions:
            raise bad_request(f"The model '{model.name}' makes {model.dimensions}-dimensional embeddings and was "
                              f"not trained to be shortened; omit 'dimensions' or set it to {model.dimensions}.",
                              param="dimensions", code="unsupported_value")
        token_lists = self._tokens(model, body.input)
        prompt_tokens = sum(len(t) for t in token_lists)
        account.admit(resp)  # the key's token budget: 429 when it is spent
        req.context.model = model.name
        vectors = self.embeddings.embed(model, token_lists)
        account.charge(model.name, prompt_tokens, 0)
        self.metrics.prompt_tokens.labels(model.name, account.name).inc(prompt_tokens)
        return model, vectors, prompt_tokens

    def _model(self, name: str):
        try:
            return self.embeddings.get(name)
        except EmbeddingModelNotFound as error:
            if any(entry.name == name for entry in self.host.available()):
                raise bad_request(f"The model '{name}' is a chat model and does not make embeddings; use an "
                                  f"embedding model such as '{DEFAULT_EMBEDDING_MODEL}'.", param="model",
                                  code="model_not_supported") from None
            message = str(error) if name == DEFAULT_EMBEDDING_MODEL else (
                f"The embedding model '{name}' does not exist. GET /v1/models lists the models.")
            raise APIError(404, message, param="model", code="model_not_found") from None

    @staticmethod
    def _tokens(model, value) -> list[list[int]]:
        """Every input as token ids with the special tokens, truncated as
        sentence-transformers truncates (to the model's max_seq_length)."""
        if isinstance(value, str):
            return model.tokenize([value])
        if isinstance(value[0], str):
            return model.tokenize(value)
        lists = [value] if isinstance(value[0], int) else value
        for ids in lists:
            if max(ids) >= model.vocab_size:
                raise bad_request(f"Token id {max(ids)} is outside the vocabulary of '{model.name}' "
                                  f"(0..{model.vocab_size - 1}).", param="input", code="invalid_value")
        return [model.wrap(ids) for ids in lists]
