"""The engines of one worker process, by model name."""

from __future__ import annotations

import logging

from impetus.engine.engine import Engine
from impetus.models import loader, store

log = logging.getLogger("impetus.engine")


class ModelNotLoaded(LookupError):
    pass


class EngineHost:
    def __init__(self, settings):
        self.settings = settings
        self.engines: dict[str, Engine] = {}

    def load(self, reference: str, progress=log.info) -> Engine:
        path = store.resolve_model(reference, self.settings.models_dir, progress=progress)
        name = reference if "/" not in reference else path.name
        loaded = loader.load(path, name=name, weights_dtype=self.settings.weights_dtype)
        log.info(
            "loaded %s from %s in %.1fs (%s weights, %.0f MB)",
            name, path, loaded.load_seconds, loaded.weights_dtype, loaded.nbytes / 1e6,
        )
        engine = Engine(loaded, self.settings)
        engine.start()
        self.engines[name] = engine
        return engine

    def get(self, name: str) -> Engine:
        engine = self.engines.get(name)
        if engine is None:
            raise ModelNotLoaded(name)
        return engine

    def available(self) -> list[store.ModelInfo]:
        """Every model this process can name: loaded ones and those on disk."""
        models = {m.name: m for m in store.list_models(self.settings.models_dir)}
        for name, engine in self.engines.items():
            if name not in models:
                path = engine.loaded.path
                models[name] = store.ModelInfo(name, path, int((path / "config.json").stat().st_mtime))
        return sorted(models.values(), key=lambda m: m.name)

    def ready(self) -> bool:
        return bool(self.engines) and all(e.is_alive() for e in self.engines.values())

    def stop(self) -> None:
        for name, engine in self.engines.items():
            engine.stop()
            log.info("engine for %s stopped (thread alive: %s)", name, engine.is_alive())
