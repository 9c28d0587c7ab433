"""The engines of one worker process, by model name, loaded on demand.

A request for a model that is not loaded loads it; the weights are read and
warmed up in a native thread, so the worker keeps serving the models it has.
Each worker keeps its models within its share of the memory budget: to make
room, the least recently used models that are neither pinned nor busy are
unloaded. A model unused for longer than its keep-alive is unloaded too.
"""

from __future__ import annotations

import logging
import threading  # gevent's, inside a patched worker: waiting on an Event yields
import time
from dataclasses import dataclass, field

import mlx.core as mx

from impetus.engine.activity import HostActivity
from impetus.engine.engine import Engine
from impetus.engine.kv_memory import KVLedger
from impetus.metrics import Metrics
from impetus.models import loader
from impetus.models.registry import ModelEntry, Registry
from impetus.system.memory import release_free_memory

log = logging.getLogger("impetus.engine")

# A model that failed to load is not retried for this long (clients retry 500s).
FAILURE_MEMORY_S = 30.0


class ModelNotLoaded(LookupError):
    pass


class ModelTooLarge(Exception):
    """The model alone needs more than this worker's memory budget."""


class NoRoom(Exception):
    """Pinned or busy models hold the memory the model needs; retry later."""


class ModelBusy(Exception):
    """An unload was asked while requests are running on the model."""


class ModelLoadFailed(Exception):
    pass


@dataclass
class Slot:
    engine: Engine
    entry: ModelEntry
    pinned: bool
    keep_alive_s: float | None  # None: until its memory is needed
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def memory(self) -> int:
        return self.engine.loaded.nbytes

    def describe(self) -> dict:
        idle = time.monotonic() - self.last_used
        return {**self.engine.snapshot(), "pinned": self.pinned, "keep_alive_s": self.keep_alive_s,
                "idle_s": round(idle, 1), "loaded_at": int(self.loaded_at), "memory_bytes": self.memory,
                "weights_dtype": self.engine.loaded.weights_dtype,
                "load_seconds": round(self.engine.loaded.load_seconds, 3)}


def run_off_the_hub(fn):
    """Run fn in a native thread; in a gevent worker only this greenlet waits."""
    from gevent import monkey

    if monkey.is_module_patched("threading"):
        import gevent

        # The exception comes back as a value and is raised here, in the
        # greenlet: gevent's pool would print it as a traceback, though the
        # caller handles it (a bad schema, a corrupt model folder).
        def caught():
            try:
                return fn(), None
            except Exception as error:
                return None, error

        result, error = gevent.get_hub().threadpool.apply(caught)
        if error is not None:
            raise error
        return result
    return fn()


def model_settings(settings, entry: ModelEntry):
    """The server's settings with what the model's alias or folder sets over
    them (its KV precision)."""
    if entry.kv_bits is None:
        return settings
    return settings.model_copy(update={"kv_bits": entry.kv_bits,
                                       "kv_group_size": entry.kv_group_size or settings.kv_group_size})


class EngineHost:
    def __init__(self, settings, budget_bytes: int | None = None, metrics=None, activity=None):
        """`activity`: the host's interactive requests in flight (engine.activity), shared by
        the workers; none: this process's own."""
        self.settings = settings
        self.activity = activity if activity is not None else HostActivity()
        self.registry = Registry(settings.models_dir)
        # What a dead engine thread does to its process: nothing here (/readyz
        # says 503); a Gunicorn worker exits, so that a fresh one replaces it.
        self.on_engine_death = lambda name, error: None
        self.budget_bytes = budget_bytes if budget_bytes is not None else settings.worker_memory_budget()
        self.metrics = metrics if metrics is not None else Metrics.null()
        self.slots: dict[str, Slot] = {}
        self._loading: dict[str, threading.Event] = {}
        self._reserved: dict[str, int] = {}  # memory of loads in progress
        self._drafts: dict = {}  # IMPETUS_DRAFT_MODEL, loaded once (None: it could not be)
        self._failures: dict[str, tuple[str, float]] = {}
        self.stopping = False  # set when the worker begins to shut down: long streams end
        self._released_at = float("-inf")  # see release_memory_when_idle
        # KV caches (and each model's prefix cache in RAM) get what the weights leave of the budget.
        self.kv_ledger = KVLedger(room=lambda: self.budget_bytes - self.memory_used() - sum(self._reserved.values()))

    @property
    def engines(self) -> dict[str, Engine]:
        return {name: slot.engine for name, slot in self.slots.items()}

    # -- serving -------------------------------------------------------------

    def acquire(self, name: str) -> Engine:
        """The engine for a model, loading it first if needed."""
        slot = self.slots.get(name)
        if slot is None:
            return self.load(name)
        slot.last_used = time.monotonic()
        return slot.engine

    def get(self, name: str) -> Engine:
        slot = self.slots.get(name)
        if slot is None:
            raise ModelNotLoaded(name)
        return slot.engine

    def load(self, name: str, pin: bool | None = None, keep_alive_s: float | None = None,
             progress=log.info) -> Engine:
        """Load a model (a name, alias or folder path), or return it if loaded;
        pin and keep_alive_s, when given, apply either way. A folder given by its
        path is served under the folder's name."""
        entry = None
        if name not in self.slots and name not in self._loading:
            entry = self.registry.find(name, progress=progress)  # ModelNotFound: 404
            name = entry.name
        while name in self._loading:  # another greenlet is loading it: wait for that
            self._loading[name].wait()
        slot = self.slots.get(name)
        if slot is None:
            slot = self._load_new(entry or self.registry.find(name, progress=progress), pin, keep_alive_s)
        if pin is not None:
            slot.pinned = pin
        if keep_alive_s is not None:
            slot.keep_alive_s = keep_alive_s or None
        slot.last_used = time.monotonic()
        return slot.engine

    def _load_new(self, entry: ModelEntry, pin: bool | None, keep_alive_s: float | None) -> Slot:
        name = entry.name
        failure = self._failures.get(name)
        if failure and time.monotonic() - failure[1] < FAILURE_MEMORY_S:
            raise ModelLoadFailed(failure[0])
        dtype = loader.choose_weights_dtype(entry.weights_dtype or self.settings.weights_dtype)
        try:
            need = entry.metadata.memory_estimate(dtype)
        except Exception as error:  # unreadable config.json or safetensors header
            raise ModelLoadFailed(f"The model '{name}' could not be read from {entry.path}: {error}") from error
        if need > self.budget_bytes:
            raise ModelTooLarge(
                f"The model '{name}' needs about {need / 2**20:.0f} MiB of weights; this worker's memory "
                f"budget is {self.budget_bytes / 2**20:.0f} MiB (IMPETUS_MEMORY_BUDGET_FRACTION).")
        done = self._loading[name] = threading.Event()
        self._reserved[name] = need
        try:
            self._make_room(need, name)
            try:
                loaded = run_off_the_hub(lambda: _load_and_warm(entry, dtype))
            except Exception as error:  # a corrupt or unsupported folder
                message = f"The model '{name}' could not be loaded from {entry.path}: {error}"
                log.error("%s", message)
                self._failures[entry.name] = (message, time.monotonic())
                raise ModelLoadFailed(message) from error
            self._failures.pop(entry.name, None)
            log.info("loaded %s from %s in %.1fs (%s weights, %.0f MB)", name, entry.path, loaded.load_seconds,
                     loaded.weights_dtype, loaded.nbytes / 1e6)
            engine = Engine(loaded, model_settings(self.settings, entry), draft=self._draft_for(loaded),
                            kv_ledger=self.kv_ledger, activity=self.activity)
            engine.on_death = lambda error: self.on_engine_death(name, error)
            engine.start()
            pinned = pin if pin is not None else name in self.settings.pinned_models
            keep = self.settings.keep_alive_s if keep_alive_s is None else (keep_alive_s or None)
            slot = self.slots[name] = Slot(engine, entry, pinned, keep)
            self.metrics.model_loaded(loaded)
            return slot
        finally:
            del self._reserved[name]
            del self._loading[name]
            done.set()

    def _draft_for(self, loaded) -> object | None:
        """IMPETUS_SPECULATIVE=draft: the draft model (loaded once, beside
        every model it serves; its memory is not counted in the budget), or
        None when there is none or its vocabulary is not the model's (the
        engine then guesses by prompt lookup)."""
        name = self.settings.draft_model
        if self.settings.speculative != "draft" or not name:
            return None
        if name not in self._drafts:
            try:
                entry = self.registry.find(name)
                dtype = loader.choose_weights_dtype(entry.weights_dtype or self.settings.weights_dtype)
                self._drafts[name] = run_off_the_hub(lambda: _load_and_warm(entry, dtype))
            except Exception as error:
                log.error("the draft model %s could not be loaded: %s", name, error)
                self._drafts[name] = None
        draft = self._drafts[name]
        if draft is None or draft.name == loaded.name:
            return None
        if draft.tokenizer._tokenizer.get_vocab() != loaded.tokenizer._tokenizer.get_vocab():
            log.warning("the draft model %s has another vocabulary than %s: prompt lookup instead",
                        draft.name, loaded.name)
            return None
        return draft

    def _make_room(self, need: int, for_name: str) -> None:
        def used():
            return sum(s.memory for s in self.slots.values()) + sum(self._reserved.values()) - need

        while used() + need > self.budget_bytes:
            idle = [(s.last_used, n) for n, s in self.slots.items() if not s.pinned and s.engine.in_flight == 0]
            if not idle:
                held = ", ".join(f"{n} ({s.memory / 2**20:.0f} MiB{', pinned' if s.pinned else ', busy'})"
                                 for n, s in self.slots.items()) or "models being loaded"
                raise NoRoom(f"No room to load '{for_name}' ({need / 2**20:.0f} MiB) within this worker's "
                             f"{self.budget_bytes / 2**20:.0f} MiB budget: held by {held}.")
            _, victim = min(idle)
            log.info("unloading %s (least recently used) to make room for %s", victim, for_name)
            self._unload(victim)

    # -- unloading -------------------------------------------------------------

    def unload(self, name: str) -> None:
        slot = self.slots.get(name)
        if slot is None:
            raise ModelNotLoaded(name)
        if slot.engine.in_flight:
            raise ModelBusy(f"The model '{name}' is serving {slot.engine.in_flight} requests.")
        self._unload(name)

    def _unload(self, name: str) -> None:
        slot = self.slots.pop(name)
        slot.engine.stop()
        self.metrics.model_unloaded(name)
        del slot
        release_free_memory()

    def unload_expired(self) -> list[str]:
        """Unload the models idle for longer than their keep-alive."""
        now = time.monotonic()
        expired = [n for n, s in self.slots.items()
                   if s.keep_alive_s is not None and not s.pinned and s.engine.in_flight == 0
                   and now - s.last_used > s.keep_alive_s]
        for name in expired:
            log.info("unloading %s: idle for longer than its keep-alive", name)
            self._unload(name)
        return expired

    def release_memory_when_idle(self) -> bool:
        """Once no model has served for `idle_release_s`, give the freed memory
        back to the OS (impetus.system.memory): once per quiet spell, and again
        whenever MLX's cache has filled since (something freed late). Called
        every second by the worker's housekeeping; True when it released."""
        now = time.monotonic()
        after = self.settings.idle_release_s
        if not after or any(s.engine.in_flight for s in self.slots.values()):
            return False
        active_at = max((max(s.last_used, s.engine.last_done_at) for s in self.slots.values()), default=0.0)
        if now - active_at < after or (self._released_at >= active_at and not mx.get_cache_memory()):
            return False
        release_free_memory()
        self._released_at = now
        return True

    # -- state -----------------------------------------------------------------

    def available(self) -> list[ModelEntry]:
        """Every model this process can name: the registry's and the loaded ones."""
        models = {e.name: e for e in self.registry.entries()}
        for name, slot in self.slots.items():
            models.setdefault(name, slot.entry)
        return sorted(models.values(), key=lambda e: e.name)

    def memory_used(self) -> int:
        return sum(s.memory for s in self.slots.values())

    def ready(self) -> bool:
        # No model loaded is fine (they load on demand); a dead engine thread is not.
        return all(s.engine.is_alive() for s in self.slots.values())

    def stop(self) -> None:
        for name, slot in list(self.slots.items()):
            slot.engine.stop()
            log.info("engine for %s stopped (thread alive: %s)", name, slot.engine.is_alive())


def _load_and_warm(entry: ModelEntry, dtype: str):
    loaded = loader.load(entry.path, name=entry.name, weights_dtype=dtype, chat_template=entry.chat_template)
    loader.warm_up(loaded)
    return loaded
