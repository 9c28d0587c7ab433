"""Prometheus metrics, counted once across every Gunicorn worker.

Gunicorn forks several workers, each its own process: prometheus-client's
multiprocess mode keeps every worker's values in files under
PROMETHEUS_MULTIPROC_DIR (set by `impetus serve` before the workers start) and
sums them when /metrics is scraped. The master removes a dead worker's live
gauges in `child_exit`. Names use base units and the `impetus_` prefix.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from impetus.system import info
from impetus.system.info import thermal_state

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2)


class Metrics:
    """Every metric the service records, created once per process."""

    def __init__(self, registry: CollectorRegistry | None = None):
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry

        def counter(name, doc, labels=()):
            return Counter(name, doc, labels, registry=registry)

        self.requests = counter("impetus_requests_total", "HTTP requests answered",
                                ("route", "status", "model"))
        self.request_seconds = Histogram("impetus_request_duration_seconds",
                                         "End-to-end request time, to the last byte of a stream",
                                         ("route",), buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft_seconds = Histogram("impetus_time_to_first_token_seconds", "Time to the first generated token",
                                      ("model",), buckets=LATENCY_BUCKETS, registry=registry)
        self.tpot_seconds = Histogram("impetus_time_per_output_token_seconds",
                                      "Time per generated token after the first", ("model",),
                                      buckets=TOKEN_BUCKETS, registry=registry)
        self.prompt_tokens = counter("impetus_prompt_tokens_total", "Prompt tokens", ("model", "key"))
        self.generation_tokens = counter("impetus_generation_tokens_total", "Generated tokens", ("model", "key"))
        self.queue_rejections = counter("impetus_queue_rejections_total", "Requests refused: queue full",
                                        ("model",))
        self.cache = counter("impetus_cache_requests_total", "Response cache lookups", ("result",))
        self.rate_limited = counter("impetus_rate_limited_total", "Requests refused by a rate limit", ("kind",))
        self.auth_failures = counter("impetus_auth_failures_total", "Requests refused for their key", ("reason",))
        self.redis_errors = counter("impetus_redis_errors_total", "Redis unavailable (degraded mode)",
                                    ("operation",))
        self.documents_files = counter("impetus_documents_files_total",
                                       "Files ingested into vector stores, by outcome (completed, failed)", ("status",))
        self.documents_chunks = counter("impetus_documents_chunks_total", "Chunks embedded into vector stores")
        self.batch_requests = counter("impetus_batch_requests_total",
                                      "Lines of batches answered, by outcome (completed, failed)", ("status",))

        def gauge(name, doc, labels=(), mode="livesum"):
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode=mode)

        self.running = gauge("impetus_requests_running", "Requests in the batch", ("model",))
        self.waiting = gauge("impetus_requests_waiting", "Requests waiting for a batch slot", ("model",))
        self.waiting_by_key = gauge("impetus_requests_waiting_by_key", "Requests waiting for a batch slot, by key",
                                    ("model", "key"))
        self.queue_wait_seconds = Histogram("impetus_queue_wait_seconds", "Time a request waited for a batch slot",
                                            ("model", "priority"), buckets=LATENCY_BUCKETS, registry=registry)
        self.preempted = counter("impetus_requests_preempted_total",
                                 "Running requests paused to give their slot to another key", ("model",))
        self.spec_proposed = counter("impetus_spec_proposed_tokens_total",
                                     "Tokens guessed for speculative decoding (prompt lookup or a draft model)", ("model",))
        self.spec_accepted = counter("impetus_spec_accepted_tokens_total",
                                     "Draft tokens the model accepted (each one a forward pass saved)", ("model",))
        self.prefix_hits = counter("impetus_prefix_cache_hits_total",
                                   "Requests started from a cached prompt prefix, by tier (ram, disk)",
                                   ("model", "tier"))
        self.prefix_disk_bytes = counter("impetus_prefix_cache_disk_io_bytes_total",
                                         "Bytes of prefix caches read from and written to disk",
                                         ("model", "direction"))
        self.prefix_ram_bytes = gauge("impetus_prefix_cache_ram_bytes", "Prefix caches held in RAM", ("model",))
        self.kv_bytes = gauge("impetus_kv_cache_bytes",
                              "KV cache bytes counted for the running requests (engine.kv_memory)", ("model",))
        self.kv_waits = counter("impetus_kv_waits_total", "Requests that waited in the queue for KV cache room",
                                ("model",))
        # The disk tier is one folder shared by the host's workers: each sees all of it.
        self.prefix_stored_bytes = gauge("impetus_prefix_cache_disk_bytes", "Prefix caches stored on disk",
                                         ("model",), mode="livemax")
        self.model_load_seconds = gauge("impetus_model_load_seconds", "Time to load the model", ("model",),
                                        mode="liveall")
        self.model_bytes = gauge("impetus_model_memory_bytes", "Memory of the loaded model's weights",
                                 ("model",), mode="liveall")
        self.mlx_active_bytes = gauge("impetus_mlx_active_memory_bytes", "MLX memory in use")
        self.mlx_cache_bytes = gauge("impetus_mlx_cache_memory_bytes", "Freed MLX buffers kept for reuse")
        self.mlx_peak_bytes = gauge("impetus_mlx_peak_memory_bytes", "MLX peak memory", mode="livemax")
        self.resident_bytes = gauge("impetus_process_resident_memory_bytes", "Resident memory of the workers")
        self.memory_budget_bytes = gauge("impetus_memory_budget_bytes",
                                         "Memory the workers may use for models (IMPETUS_MEMORY_BUDGET_*)")
        self.thermal_state = gauge("impetus_thermal_state",
                                   "macOS thermal state: 0 nominal, 1 fair, 2 serious, 3 critical; -1 unknown",
                                   mode="livemax")

        # Series for every known label value exist from the start, at 0, so a
        # dashboard shows a flat line rather than "no data" until the first event.
        for result in ("hit", "miss", "bypass"):
            self.cache.labels(result)
        for kind in ("requests", "tokens", "budget"):
            self.rate_limited.labels(kind)
        for reason in ("missing", "invalid", "not_admin", "unverifiable"):
            self.auth_failures.labels(reason)
        for operation in ("auth", "rate_limit", "usage", "audit"):
            self.redis_errors.labels(operation)
        for status in ("completed", "failed"):
            self.documents_files.labels(status)
            self.batch_requests.labels(status)
        for route in ("/v1/chat/completions", "/v1/completions"):
            self.request_seconds.labels(route)
        self._waiting_keys: dict[str, set[str]] = {}  # keys seen waiting, per model: back to 0 when none wait
        self._counted: dict[tuple, int] = {}  # (counter, labels) -> the engine's total already counted

    @classmethod
    def null(cls) -> "Metrics":
        """Metrics nobody scrapes (the app without /metrics: tests, scripts),
        so that code that measures never asks whether it should."""
        return cls(CollectorRegistry())

    def model_loaded(self, loaded) -> None:
        self.model_load_seconds.labels(loaded.name).set(loaded.load_seconds)
        self.model_bytes.labels(loaded.name).set(loaded.nbytes)
        self.queue_rejections.labels(loaded.name)
        self.ttft_seconds.labels(loaded.name)
        self.tpot_seconds.labels(loaded.name)

    def model_unloaded(self, name: str) -> None:
        # Multiprocess gauges live in files: a removed label would keep its last
        # value there, so an unloaded model reads 0.
        for gauge in (self.model_bytes, self.running, self.waiting, self.prefix_ram_bytes, self.prefix_stored_bytes,
                      self.kv_bytes):
            gauge.labels(name).set(0)

    def sample_engines(self, host) -> None:
        """Gauges that follow the engines, refreshed by each worker."""
        import mlx.core as mx

        for name, engine in host.engines.items():
            self.running.labels(name).set(engine.stats.running)
            self.waiting.labels(name).set(engine.stats.waiting)
            waiting = engine.waiting_by_key
            for key in set(waiting) | self._waiting_keys.setdefault(name, set()):
                self.waiting_by_key.labels(name, key).set(waiting.get(key, 0))
            self._waiting_keys[name] |= set(waiting)
            # The engine keeps totals; the counters advance by what is new.
            stats = engine.stats
            for metric, labels, total in ((self.preempted, (name,), stats.preempted),
                                          (self.spec_proposed, (name,), stats.spec_proposed),
                                          (self.spec_accepted, (name,), stats.spec_accepted),
                                          (self.kv_waits, (name,), stats.kv_waits),
                                          (self.prefix_hits, (name, "ram"), stats.prefix_hits_ram),
                                          (self.prefix_hits, (name, "disk"), stats.disk_hits),
                                          (self.prefix_disk_bytes, (name, "read"), stats.disk_bytes_read),
                                          (self.prefix_disk_bytes, (name, "written"), stats.disk_bytes_written)):
                new = total - self._counted.get((metric, labels), 0)
                if new > 0:
                    metric.labels(*labels).inc(new)
                self._counted[(metric, labels)] = total
            self.kv_bytes.labels(name).set(stats.kv_bytes)
            prefixes = engine.batch.prefixes
            self.prefix_ram_bytes.labels(name).set(prefixes.nbytes)
            self.prefix_stored_bytes.labels(name).set(prefixes.disk.usage()[1] if prefixes.disk is not None else 0)
        self.memory_budget_bytes.set(host.budget_bytes)
        self.mlx_active_bytes.set(mx.get_active_memory())
        self.mlx_cache_bytes.set(mx.get_cache_memory())
        self.mlx_peak_bytes.set(mx.get_peak_memory())
        self.resident_bytes.set(resident_memory_bytes())
        state = thermal_state()
        self.thermal_state.set(-1 if state is None else state)


_worker_exits = None


def worker_exits() -> Counter:
    """Counted by the Gunicorn master (its own file in the multiprocess dir)
    each time a worker process ends: a crash, an engine death, a reload.
    Several a quarter hour is a restart loop (deploy/prometheus/alerts.yml)."""
    global _worker_exits
    if _worker_exits is None:
        _worker_exits = Counter("impetus_worker_exits_total", "Worker processes that ended (Gunicorn replaces them)",
                                registry=None)
    return _worker_exits


def resident_memory_bytes() -> int:
    return info.resident_memory_bytes() or 0


def exposition(run_dir=None) -> tuple[bytes, str]:
    """The text format of all workers' metrics (or this process's, outside
    Gunicorn), and with `run_dir` the restarts `impetus up` recorded there."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from impetus.metrics.components import ComponentRestarts

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    if run_dir is not None:
        registry.register(ComponentRestarts(run_dir))
    return generate_latest(registry), CONTENT_TYPE_LATEST
