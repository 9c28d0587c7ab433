"""Gunicorn lifecycle with real processes: several workers, clean exit, boot failure."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port, start_server, stop_server

pytestmark = pytest.mark.slow


def test_two_workers_serve_and_exit_cleanly_on_sigterm(data_dir, tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    process = start_server(port, log, {"IMPETUS_DATA_DIR": str(data_dir), "IMPETUS_WORKERS": "2"})
    try:
        for _ in range(4):
            response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
                "model": DEFAULT_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
            assert response.status_code == 200
    finally:
        stop_server(process)
    output = log.read_text()
    assert process.returncode == 0, output
    assert output.count("stopped (thread alive: False)") == 2, output
    for bad in ("terminate called", "SIGABRT", "Traceback"):
        assert bad not in output, output


def test_a_model_that_cannot_load_stops_the_server_with_a_clear_error(data_dir, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    result = subprocess.run(
        [sys.executable, "-m", "impetus", "serve", "--port", str(free_port()), "--model", str(broken),
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "impetus: cannot load model" in output and "broken-model" in output
    assert "Traceback" not in output
    assert output.count("Booting worker") <= 2  # gave up, did not respawn in a loop


def test_sigterm_drains_a_running_stream_but_not_idle_connections(data_dir, tmp_path):
    import signal
    import os
    import threading

    port = free_port()
    log = tmp_path / "server.log"
    process = start_server(port, log, {"IMPETUS_DATA_DIR": str(data_dir)})
    base = f"http://127.0.0.1:{port}"
    # An idle keep-alive connection, as pooled clients and proxies keep them.
    idle = httpx.Client(base_url=base, timeout=60)
    assert idle.get("/healthz").status_code == 200
    lines: list[str] = []
    started = threading.Event()

    def stream():
        with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=120, json={
            "model": DEFAULT_MODEL, "max_tokens": 40, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Write a story about a lighthouse."}]}) as response:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    try:
        assert started.wait(60)
        os.killpg(process.pid, signal.SIGTERM)
        reader.join(120)
        process.wait(30)  # raises if the idle connection held the worker
    finally:
        idle.close()
        stop_server(process)
    assert lines[-1] == "data: [DONE]"  # the running stream was finished, not cut
    finishes = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in lines[1:-1]]
    assert finishes[-1] in ("stop", "length")
    assert process.returncode == 0, log.read_text()
