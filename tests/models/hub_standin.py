"""A stand-in for the Hugging Face hub on loopback (the real one cannot be
reached here): the three endpoints huggingface_hub's snapshot_download uses,
serving a local model folder, optionally dropping the connection a few kilobytes into the weights."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    def __init__(self, folder: Path, repo_id: str, break_weights: bool = False):
        self.files = {p.name: p for p in folder.iterdir() if p.is_file()}
        self.repo_id = repo_id
        self.break_weights = break_weights
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, value) -> None:
                body = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _not_found(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _file(self, head: bool) -> None:
                name = self.path.split("/resolve/", 1)[1].split("/", 1)[1]
                data = hub.files[name].read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{name}"')
                self.end_headers()
                if head:
                    return
                if hub.break_weights and name.endswith(".safetensors"):
                    self.wfile.write(data[:4096])  # then the connection drops
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def do_HEAD(self):
                hub.requests.append(f"HEAD {self.path}")
                if self.path.startswith(f"/{hub.repo_id}/resolve/"):
                    return self._file(head=True)
                self._not_found()

            def do_GET(self):
                hub.requests.append(f"GET {self.path}")
                if self.path.startswith(f"/api/models/{hub.repo_id}/tree/"):
                    return self._json([{"type": "file", "path": n, "size": p.stat().st_size, "oid": "0" * 40}
                                       for n, p in hub.files.items()])
                if self.path.startswith(f"/api/models/{hub.repo_id}"):
                    return self._json({"id": hub.repo_id, "sha": COMMIT,
                                       "siblings": [{"rfilename": n} for n in hub.files]})
                if self.path.startswith(f"/{hub.repo_id}/resolve/"):
                    return self._file(head=False)
                self._not_found()

        return Handler
