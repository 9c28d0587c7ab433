"""The embedding models of one worker process, loaded on first use.

Loading and encoding run in a native thread (gevent's thread pool), so the
worker's other requests and streams go on meanwhile; one batch is encoded at a
time per worker, and requests that arrive meanwhile wait their turn
cooperatively. Background work (a vector store's ingestion) asks with
`background=True` and waits while a request's batch is waiting: a person's
/v1/embeddings call never queues behind a document set. Embedding models are small (all-MiniLM-L6-v2: 91 MB) and are
not counted against the chat models' memory budget.
"""

from __future__ import annotations

import logging
import threading  # gevent's, inside a patched worker: waiting on a lock yields
import time  # gevent's too

import numpy as np

from impetus.embeddings.model import EmbeddingModel, available_embedding_models, resolve_embedding_model
from impetus.engine.host import run_off_the_hub

log = logging.getLogger("impetus.embeddings")


class EmbeddingHost:
    def __init__(self, settings):
        self.models_dir = settings.models_dir
        self.loaded: dict[str, EmbeddingModel] = {}
        self._load_lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self._waiting = 0  # requests' (not background) batches waiting or running

    def available(self) -> list[str]:
        return available_embedding_models(self.models_dir)

    def get(self, reference: str) -> EmbeddingModel:
        """The model, loaded first if needed. EmbeddingModelNotFound if there is none."""
        model = self.loaded.get(reference)
        if model is not None:
            return model
        name, folder = resolve_embedding_model(reference, self.models_dir)
        with self._load_lock:
            if name not in self.loaded:
                model = run_off_the_hub(lambda: EmbeddingModel.load(folder, name))
                log.info("loaded embedding model %s from %s in %.2fs (%.0f MB)", name, folder,
                         model.load_seconds, model.nbytes / 1e6)
                self.loaded[name] = model
        return self.loaded[name]

    def embed(self, model: EmbeddingModel, token_lists: list[list[int]], background: bool = False) -> np.ndarray:
        if background:
            while self._waiting:
                time.sleep(0.02)  # gevent's sleep in a worker: the request's batch goes first
            with self._compute_lock:
                return run_off_the_hub(lambda: model.embed(token_lists))
        self._waiting += 1
        try:
            with self._compute_lock:
                return run_off_the_hub(lambda: model.embed(token_lists))
        finally:
            self._waiting -= 1

    @property
    def busy(self) -> bool:
        return self._waiting > 0
