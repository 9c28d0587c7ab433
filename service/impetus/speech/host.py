"""The speech-to-text models of one worker, and whose recording is transcribed next.

A Whisper transcription is a loop of one-token steps over 30-second windows
of one recording: it does not batch with chat requests, and two at once on
one model only share the machine. So one transcription runs at a time per
worker (MLX computes in a native thread, gevent's pool, while the worker's
other greenlets go on), and the waiting ones are ordered by the engine's own
fair scheduler (`engine.scheduler.Scheduler` with one slot): earlier
priority first, then the key with the least audio transcribed recently
(seconds, decayed with the scheduler's 20 s half-life), then the shorter
recording. One key's batch of hour-long meetings does not hold another
key's voice note for an hour: it waits for one recording at most.

Models are found as the chat models are (the models folder, a model whose
config says `whisper`), loaded on first use, and not counted against the
chat models' memory budget (Whisper large-v3 turbo: 1.6 GB in float16).
This room must not know about HTTP.
"""

from __future__ import annotations

import logging
import threading  # gevent's inside a patched worker: waiting yields
import time
from dataclasses import dataclass, field
from pathlib import Path

from impetus.engine.host import run_off_the_hub
from impetus.engine.request import INTERACTIVE, Tenant
from impetus.engine.scheduler import Scheduler
from impetus.models.store import is_model_folder, is_speech_folder
from impetus.speech.whisper import Options, SpeechModel, Transcript

log = logging.getLogger("impetus.speech")


class SpeechModelNotFound(LookupError):
    pass


@dataclass(eq=False)
class Job:
    """A recording waiting for its turn, as the scheduler reads a request."""

    tenant: Tenant
    seconds: float
    priority: int = INTERACTIVE
    arrival: int = 0
    admitted_at: float | None = None
    turn: threading.Event = field(default_factory=threading.Event)

    @property
    def prompt_tokens(self) -> range:  # the scheduler puts shorter work first
        return range(int(self.seconds))


class SpeechHost:
    def __init__(self, settings):
        self.models_dir = settings.models_dir
        self.loaded: dict[str, SpeechModel] = {}
        self._load_lock = threading.Lock()
        self._queue = Scheduler(1)
        self._running: Job | None = None

    def available(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if is_model_folder(p) and is_speech_folder(p))

    def get(self, name: str) -> SpeechModel:
        model = self.loaded.get(name)
        if model is not None:
            return model
        if name not in self.available():
            raise SpeechModelNotFound(name)
        with self._load_lock:
            if name not in self.loaded:
                path = self.models_dir / name
                model = run_off_the_hub(lambda: SpeechModel.load(path, name))
                log.info("loaded speech model %s from %s in %.2fs (%.0f MB)", name, path, model.load_seconds,
                         model.nbytes / 1e6)
                self.loaded[name] = model
        return self.loaded[name]

    def transcribe(self, model: SpeechModel, audio, seconds: float, options: Options, tenant: Tenant,
                   priority: int | None = None) -> Transcript:
        """Wait for this recording's turn, then transcribe it."""
        job = Job(tenant, seconds, tenant.priority if priority is None else max(tenant.priority, priority))
        self._queue.add(job)
        try:
            self._next()
            job.turn.wait()
            return run_off_the_hub(lambda: model.transcribe(audio, options))
        finally:
            if self._running is job:
                self._queue.stopped(job)
                self._queue.charge(tenant, int(seconds) + 1)
                self._running = None
            else:  # its client left while it waited
                self._queue.remove(job)
            self._next()

    def _next(self) -> None:
        if self._running is None and self._queue:
            job = self._queue.order()[0]
            self._queue.remove(job)
            self._queue.started(job)
            job.admitted_at = time.monotonic()
            self._running = job
            job.turn.set()

    def folder(self, name: str) -> Path:
        return self.models_dir / name
