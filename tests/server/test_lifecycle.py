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
    import os
    import signal
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


def test_sighup_replaces_the_workers_without_cutting_a_stream(data_dir, tmp_path):
    """Gunicorn's graceful reload (what `systemctl reload` and launchd's
    restart paths use): new workers start, the old one finishes its stream."""
    import os
    import signal
    import threading
    import time

    port = free_port()
    process = start_server(port, tmp_path / "server.log", {"IMPETUS_DATA_DIR": str(data_dir)})
    base = f"http://127.0.0.1:{port}"
    try:
        old_pid = httpx.get(f"{base}/readyz", timeout=10).json()["pid"]
        events: list[dict] = []
        started = threading.Event()

        def stream():
            with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=180, json={
                    "model": DEFAULT_MODEL, "max_tokens": 60, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}]}) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        events.append(json.loads(line[6:]))
                        started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(60)
        pidfile = data_dir / "run" / f"impetus-{port}.pid"  # what the README's reload uses
        assert int(pidfile.read_text()) == process.pid
        os.kill(process.pid, signal.SIGHUP)  # the master only
        reader.join(180)
        deadline = time.monotonic() + 60
        while True:  # the new worker has loaded the model
            try:
                new_pid = httpx.get(f"{base}/readyz", timeout=5).json()["pid"]
                if new_pid != old_pid:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "no new worker after SIGHUP"
            time.sleep(0.3)
        assert process.poll() is None  # the master stays
        deadline = time.monotonic() + 30
        while _running(old_pid):  # the old worker leaves once its stream is done
            assert time.monotonic() < deadline, "the old worker did not exit"
            time.sleep(0.2)
    finally:
        stop_server(process)
    assert events[-1]["usage"]["completion_tokens"] == 60  # every token arrived
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[-1] == "length"
    assert process.returncode == 0


def _running(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # exited but not yet reaped by the master
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
