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

import os
import socket

import gevent
from gunicorn.workers.ggevent import GeventWorker


class ImpetusGeventWorker(GeventWorker):
    def init_process(self):
        self._connections: dict = {}  # handler greenlet -> its client socket
        self._in_request: set = set()
        super().init_process()

    def handle(self, listener, client, addr):
        current = gevent.getcurrent()
        self._connections[current] = client
        try:
            super().handle(listener, client, addr)
        finally:
            self._connections.pop(current, None)

    def handle_request(self, listener_name, req, sock, addr):
        current = gevent.getcurrent()
        self._in_request.add(current)
        try:
            kept = super().handle_request(listener_name, req, sock, addr)
        finally:
            self._in_request.discard(current)
        if not self.alive:
            # Keep-alive was decided when the request began; a request that
            # began before the shutdown (a stream) must not leave its
            # connection waiting for a next request either.
            raise StopIteration()
        return kept

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        host = getattr(self.app, "host", None)  # the ImpetusApplication's engines
        if host is not None:
            host.stopping = True  # endless streams (the dashboard's events) end now
        # Not in the signal handler itself: killing greenlets switches to them.
        gevent.spawn(self._close_idle_connections)

    def _close_idle_connections(self):
        # A handler not inside a request is blocked reading the next one; no
        # request can be lost by ending it (the client sees a closed idle
        # connection, as with any keep-alive timeout). Shutting the socket
        # down makes that read see EOF, which Gunicorn treats as the client
        # leaving. Requests that finish from now on close their connection
        # (handle_request above).
        for handler, client in list(self._connections.items()):
            if handler not in self._in_request:
                _shutdown_quietly(client)


def _shutdown_quietly(client) -> None:
    """Shut the connection down so a blocked read returns EOF.

    Through a duplicate descriptor: gevent's own `shutdown()` would also fail
    the pending read with EBADF, which Gunicorn logs as a socket error.
    Shutdown acts on the socket, not the descriptor, so the original sees it.
    """
    try:
        duplicate = socket.socket(fileno=os.dup(client.fileno()))
    except OSError:
        return  # already closed
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        duplicate.close()
