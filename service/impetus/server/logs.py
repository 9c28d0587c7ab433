"""Structured logs: one JSON object per line, from the master and every worker.

Logs go to stderr (launchd and systemd keep them) or, with IMPETUS_LOG_FILE, to
a file opened by a WatchedFileHandler: every process appends whole lines, and
after newsyslog or logrotate renames the file (impetus/share/services: newsyslog.conf, logrotate.conf)
each process reopens it at its next line. No key and no prompt text is ever
logged, unless IMPETUS_LOG_PROMPTS=true asks for the prompts (debugging only).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time

# Attributes every LogRecord has; anything else passed as `extra=` is a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def handler_for(log_file) -> logging.Handler:
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler: logging.Handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    return handler


def gunicorn_logconfig(settings) -> dict:
    """Gunicorn's own messages (and ours) through the same JSON handler."""
    handler = {"()": "impetus.server.logs.handler_for", "log_file": str(settings.log_file or "")}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"json": handler},
        "root": {"level": settings.log_level.upper(), "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": settings.log_level.upper(), "handlers": [], "propagate": True},
            # Requests are logged by impetus.access, with the fields that matter.
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }
