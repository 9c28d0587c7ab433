"""`impetus models pull`: fails fast and clearly offline, and never leaves a
partial model folder. huggingface_hub reads its endpoint at import, so each
pull runs the real command line in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hub_standin import HubStandIn

from impetus.models.store import DEFAULT_MODEL
from impetus.server.process import free_port

pytestmark = pytest.mark.slow


def pull(data_dir, *args, **env) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "impetus", "models", "pull", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", **env})
    return result, time.monotonic() - started


def leftovers(data_dir) -> list[str]:
    models = data_dir / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_offline_fails_fast_with_a_clear_message(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: what a machine without a network sees
    result, seconds = pull(tmp_path, "mlx-community/SmolLM2-135M-Instruct-8bit", HF_ENDPOINT=closed)
    assert result.returncode == 2
    assert "cannot reach" in result.stderr and "offline" in result.stderr
    assert "Traceback" not in result.stderr
    assert seconds < 30  # not a retry loop
    assert leftovers(tmp_path) == []


def test_hub_offline_mode_is_named(tmp_path):
    result, _ = pull(tmp_path, "mlx-community/SmolLM2-135M-Instruct-8bit", HF_HUB_OFFLINE="1")
    assert result.returncode == 2 and "HF_HUB_OFFLINE" in result.stderr
    assert leftovers(tmp_path) == []


def test_not_a_repository_id(tmp_path):
    result, _ = pull(tmp_path, "just-a-name")
    assert result.returncode == 2 and "owner/name" in result.stderr


@pytest.fixture
def model_folder(data_dir):
    return data_dir / "models" / DEFAULT_MODEL


def test_a_download_cut_off_leaves_nothing(tmp_path, model_folder):
    hub = HubStandIn(model_folder, "team/smol", break_weights=True)
    try:
        result, _ = pull(tmp_path, "team/smol", HF_ENDPOINT=hub.url)
    finally:
        hub.close()
    assert result.returncode == 2 and "failed" in result.stderr, result.stderr
    assert any("model.safetensors" in r for r in hub.requests)  # it did get that far
    assert leftovers(tmp_path) == []  # no folder, no staging


def test_a_complete_pull_is_a_model_and_repeating_it_needs_force(tmp_path, model_folder):
    hub = HubStandIn(model_folder, "team/smol")
    try:
        result, _ = pull(tmp_path, "team/smol", "--name", "smol", HF_ENDPOINT=hub.url)
        assert result.returncode == 0, result.stderr
        assert leftovers(tmp_path) == ["smol"]
        pulled = tmp_path / "models" / "smol"
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            assert (pulled / name).read_bytes() == (model_folder / name).read_bytes()
        again, _ = pull(tmp_path, "team/smol", "--name", "smol", HF_ENDPOINT=hub.url)
        assert again.returncode == 2 and "--force" in again.stderr
        missing, _ = pull(tmp_path, "team/other", HF_ENDPOINT=hub.url)
        assert missing.returncode == 2 and "does not exist" in missing.stderr
    finally:
        hub.close()
    listed = subprocess.run([sys.executable, "-m", "impetus", "models", "list", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert "smol" in listed.stdout and "4-bit" in listed.stdout
