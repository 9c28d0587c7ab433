"""Gunicorn's gevent worker, with a shutdown that does not wait on idle clients.

On SIGTERM (or a graceful reload) Gunicorn stops accepting and then waits, up
to graceful_timeout, for every connection handler to finish. A client that
keeps a pooled keep-alive connection open (the openai client, nginx's upstream
keepalive) parks its handler in "read the next request" and so holds the
worker for the whole graceful timeout. Here each handler is known to be either
inside a request (let it finish: a stream drains to its end) or idle between
requests (close it now).
"""

from __future__ import annotations

import gevent
from gunicorn.workers.ggevent import GeventWorker


class ImpetusGeventWorker(GeventWorker):
    def init_process(self):
        self._handlers: set = set()
        self._in_request: set = set()
        super().init_process()

    def handle(self, listener, client, addr):
        current = gevent.getcurrent()
        self._handlers.add(current)
        try:
            super().handle(listener, client, addr)
        finally:
            self._handlers.discard(current)

    def handle_request(self, listener_name, req, sock, addr):
        current = gevent.getcurrent()
        self._in_request.add(current)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            self._in_request.discard(current)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        # Not in the signal handler itself: killing greenlets switches to them.
        gevent.spawn(self._close_idle_connections)

    def _close_idle_connections(self):
        # A handler not inside a request is blocked reading the next one; no
        # request can be lost by ending it (the client sees a closed idle
        # connection, as with any keep-alive timeout). Requests that finish
        # from now on close their connection, since the worker is not alive.
        idle = [g for g in self._handlers if g not in self._in_request]
        gevent.killall(idle, block=False)
