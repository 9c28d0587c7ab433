"""The `impetus` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def impetus(*args, data_dir=None, timeout=600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "impetus", *args]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_doctor_reports_blas_and_model(data_dir):
    result = impetus("doctor", data_dir=data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OpenBLAS" in result.stdout or sys.platform == "darwin"
    assert "smollm2-135m-instruct" in result.stdout
    assert "everything needed is here" in result.stdout
    for row in ("redis-server", "nginx", "port 8081"):
        assert row in result.stdout, row


def test_import_gguf_and_list(tmp_path, default_gguf):
    result = impetus("models", "import-gguf", str(default_gguf), "--name", "smol-copy", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("smol-copy")
    assert "tensors 272/272" in result.stderr and "tokenizer" in result.stderr  # progress is shown
    listing = impetus("models", "list", data_dir=tmp_path)
    assert "smol-copy" in listing.stdout and "4-bit" in listing.stdout
    again = impetus("models", "import-gguf", str(default_gguf), "--name", "smol-copy", data_dir=tmp_path)
    assert again.returncode == 0 and "already imported" in again.stderr  # the same file: nothing to do
    other = impetus("models", "import", str(default_gguf), "--name", "smol-copy", "--bits", "8", data_dir=tmp_path)
    assert other.returncode == 2 and "already exists" in other.stderr  # other options: --force
    forced = impetus("models", "import", str(default_gguf), "--name", "smol-copy", "--bits", "8", "--force",
                     data_dir=tmp_path)
    assert forced.returncode == 0 and "8-bit" in impetus("models", "list", data_dir=tmp_path).stdout


def test_ensure_unknown_model_fails_clearly(tmp_path):
    result = impetus("models", "ensure", "mlx-community/SomeModel-4bit", data_dir=tmp_path)
    assert result.returncode == 2
    assert "not downloaded at run time" in result.stderr


@pytest.mark.slow
def test_bench_json_has_the_promised_fields(data_dir):
    result = impetus("bench", "--json", "--max-tokens", "8", "--levels", "1,2", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for field in ("raw_tokens_per_s", "server_tokens_per_s", "ratio_single_stream"):
        assert summary[field] > 0
    assert [level["concurrency"] for level in summary["levels"]] == [1, 2]
    assert all(level["errors"] == 0 for level in summary["levels"])


def test_keys_create_list_revoke(redis_server, redis_client, tmp_path):
    import os

    env = {**os.environ, "IMPETUS_REDIS_URL": redis_server.url}

    def keys(*args):
        return subprocess.run([sys.executable, "-m", "impetus", "keys", *args], capture_output=True, text=True,
                              env=env, timeout=60)

    created = keys("create", "--name", "laptop", "--rpm", "30", "--admin")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("imp_")
    assert "shown once" in created.stderr
    listing = keys("list")
    assert "laptop" in listing.stdout and key[:10] in listing.stdout and key not in listing.stdout
    assert "admin" in listing.stdout and "30" in listing.stdout
    assert keys("create", "--name", "laptop").returncode == 2
    updated = keys("update", "laptop", "--priority", "batch", "--share", "2")
    assert updated.returncode == 0 and "share 2, priority batch" in updated.stderr, updated.stderr
    assert "batch" in keys("list").stdout
    assert keys("update", "nobody", "--share", "2").returncode == 2
    assert keys("revoke", "laptop").returncode == 0
    assert "laptop" not in keys("list").stdout
    assert keys("revoke", "laptop").returncode == 2


def test_keys_without_redis_is_a_clear_error(tmp_path):
    result = impetus("keys", "list", data_dir=tmp_path)
    assert result.returncode == 2
    assert "cannot reach Redis" in result.stderr and "impetus up" in result.stderr
