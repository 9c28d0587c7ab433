"""Imports started from the dashboard, kept as one small JSON file each under
<models dir>/.imports/, so that every worker process (each answers its own
events stream) reports the same progress, and a finished import's outcome
survives a worker restart. The files are written atomically (rename), at most
every half second while tensors are converted; a day later they are removed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

KEEP_S = 24 * 3600
WRITE_EVERY_S = 0.5


class ImportJob:
    def __init__(self, folder: Path, source: str, name: str | None):
        self.folder = folder
        self.state = {"id": f"import-{uuid.uuid4().hex[:12]}", "source": source, "name": name,
                      "status": "running", "stage": "queued", "message": "waiting to start", "tensors_done": 0,
                      "tensors_total": 0, "bytes_written": 0, "bytes_total": 0, "started": time.time(),
                      "finished": None, "path": None, "error": None, "worker_pid": os.getpid()}
        self._written = 0.0
        self._write(force=True)

    def progress(self, update) -> None:
        """The importer's progress callback (an ImportProgress, or a message)."""
        fields = update.as_dict() if hasattr(update, "as_dict") else {"message": str(update)}
        self.state.update({k: v for k, v in fields.items() if k in self.state})
        self._write(force=fields.get("stage") in ("done", "skipped", "note", "tokenizer"))

    def finish(self, path: Path | None = None, error: Exception | None = None) -> None:
        self.state.update(finished=time.time(), status="failed" if error else "done",
                          error=str(error) if error else None, path=str(path) if path else None)
        if error:
            self.state["message"] = str(error)
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written < WRITE_EVERY_S:
            return
        self._written = now
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f".{self.state['id']}.{os.getpid()}"
        staging.write_text(json.dumps(self.state))
        staging.replace(self.folder / f"{self.state['id']}.json")


def jobs_folder(models_dir: Path) -> Path:
    return models_dir / ".imports"


def recent(models_dir: Path, within_s: float = KEEP_S) -> list[dict]:
    """Imports started in the last day, newest first; older files are removed."""
    folder = jobs_folder(models_dir)
    if not folder.is_dir():
        return []
    found = []
    for file in folder.glob("import-*.json"):
        try:
            job = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if time.time() - job.get("started", 0) > within_s:
            file.unlink(missing_ok=True)
            continue
        found.append(job)
    return sorted(found, key=lambda job: job["started"], reverse=True)
