"""Gunicorn with gevent workers, configured from Settings.

Each worker process loads the model itself after the fork (no preload_app):
MLX state must not cross a fork, and each worker is its own inference process
with its own engine thread.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import gevent
from gunicorn.app.base import BaseApplication
from gunicorn.errors import AppImportError

from impetus.server.logs import gunicorn_logconfig

log = logging.getLogger("impetus.server")


def _exit_worker(model: str, error: BaseException) -> None:
    """A worker whose engine thread died could only answer 503 for that model:
    it shuts down gracefully (other models' streams finish) and Gunicorn
    starts a fresh worker in its place. Called in the dying engine thread."""
    log.critical("the engine for %s died (%s: %s); this worker (pid %d) exits so that Gunicorn replaces it",
                 model, type(error).__name__, error, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)


class ImpetusApplication(BaseApplication):
    def __init__(self, settings):
        from impetus.engine.activity import HostActivity

        self.settings = settings
        # In the master, before the fork: shared memory every worker inherits (engine.activity).
        self.activity = HostActivity()
        self.host = None
        self.gateway = None
        self._beating = None  # the heartbeat greenlet
        super().__init__()

    def load_config(self):
        s = self.settings
        config = {
            "bind": [f"unix:{s.socket}" if s.socket else f"{s.host}:{s.port}"],
            "workers": s.workers,
            "worker_class": "impetus.server.worker.ImpetusGeventWorker",
            "worker_connections": 1000,
            "timeout": s.worker_timeout,
            "graceful_timeout": s.graceful_timeout,
            "keepalive": 75,
            "accesslog": None,  # impetus.access logs each request, as JSON
            "logconfig_dict": gunicorn_logconfig(s),
            "loglevel": s.log_level,
            "proc_name": "impetus",
            # For `kill -HUP $(cat …)`: a graceful reload of the workers.
            "pidfile": str(s.data_dir / "run" / f"impetus-{s.port}.pid"),
            "worker_exit": self._worker_exit,
            "child_exit": self._child_exit,
        }
        # Gunicorn 24+ opens a control socket at one fixed path per user; two
        # servers (a test beside a running one) would fight over it.
        if "control_socket_disable" in self.cfg.settings:
            config["control_socket_disable"] = True
        for key, value in config.items():
            self.cfg.set(key, value)

    def load(self):
        # Runs in the worker, after gevent has monkey-patched it.
        from impetus.api.app import create_app
        from impetus.engine.host import EngineHost
        from impetus.engine.waiters import GeventWaker
        from impetus.metrics import Metrics

        if self.settings.mlx_cache_limit_bytes is not None:
            import mlx.core as mx

            mx.set_cache_limit(self.settings.mlx_cache_limit_bytes)
        metrics = Metrics()
        self.host = EngineHost(self.settings, metrics=metrics, activity=self.activity)
        self.host.on_engine_death = _exit_worker
        try:
            self.host.load(self.settings.model)
        except Exception as error:
            # Gunicorn prints this one line (no traceback) and stops the master
            # instead of respawning a worker that cannot boot.
            raise AppImportError(f"impetus: cannot load model {self.settings.model!r}: {error}") from error
        gevent.spawn(self._housekeeping, metrics)
        gateway = broadcast = None
        if self.settings.require_api_keys:
            from impetus.gateway import Gateway

            gateway = self.gateway = Gateway(self.settings, metrics=metrics)
            broadcast = gateway.model_broadcast(self.host)
            gevent.spawn(broadcast.listen_forever)
            gevent.spawn(gateway.spool.run_forever, gevent.sleep)  # usage kept while Redis was away
            self._beating = gevent.spawn(self._heartbeat, gateway.hosts)
        return create_app(self.settings, self.host, GeventWaker(), gateway, metrics, broadcast)

    def _housekeeping(self, metrics):
        # Engine gauges are written by each worker and summed at scrape time.
        while True:
            try:
                metrics.sample_engines(self.host)
                self.host.unload_expired()
                self.host.release_memory_when_idle()
            except Exception:  # keep the loop; say what went wrong
                logging.getLogger("impetus.server").exception("housekeeping failed")
            gevent.sleep(1.0)

    def _heartbeat(self, hosts):
        """This worker in the host registry (impetus.gateway.hosts), every few
        seconds; while Redis is away the beats are skipped, and resume by themselves."""
        from redis.exceptions import RedisError

        from impetus import __version__
        from impetus.gateway.hosts import HEARTBEAT_S

        while True:
            engines = self.host.engines.values()
            try:
                hosts.beat(self.settings.advertise_address, os.getpid(), __version__,
                           [entry.name for entry in self.host.available()], [e.loaded.name for e in engines],
                           self.host.budget_bytes, self.host.memory_used(), sum(e.stats.running for e in engines),
                           sum(e.stats.waiting for e in engines))
            except RedisError as error:
                logging.getLogger("impetus.server").debug("heartbeat skipped: redis unavailable (%s)", error)
            gevent.sleep(HEARTBEAT_S)

    def _child_exit(self, server, worker):
        from prometheus_client import multiprocess

        from impetus.metrics import worker_exits

        multiprocess.mark_process_dead(worker.pid)
        worker_exits().inc()

    def _worker_exit(self, server, worker):
        if self.host is None or not worker.booted:
            # Failed to boot: let Gunicorn's exit code tell the master to stop.
            return
        self.host.stop()
        if self.gateway is not None:  # leave the host registry now, not after its TTL
            self._beating.kill()  # first, or a beat in flight could add this worker again
            try:
                self.gateway.hosts.leave(self.settings.advertise_address, os.getpid())
            except Exception:  # Redis away: the entry expires by itself
                pass
        # The engine thread has drained and returned, but its OS thread may
        # still be running MLX's thread-local destructors; if the main thread
        # runs MLX's static destructors at the same moment the process aborts
        # ("terminate called without an active exception", seen in ~1 of 3
        # worker exits). Nothing is left to flush but logs: leave now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def serve(settings) -> None:
    ImpetusApplication(settings).run()
