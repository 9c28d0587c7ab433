"""An MLX model folder as mlx-community publishes them (written by mlx-lm's own
`save`, quantized by mlx-lm with group size 64), served by path."""

from __future__ import annotations

import httpx
import pytest

from impetus.models.loader import load
from impetus.models.store import DEFAULT_MODEL, resolve_model
from impetus.server.process import free_port, start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlx_community_folder(data_dir, tmp_path_factory):
    from mlx_lm.utils import quantize_model, save

    source = data_dir / "models" / DEFAULT_MODEL
    loaded = load(source, weights_dtype="float16")
    config = {k: v for k, v in loaded.config.items() if not k.startswith("quantization") and k != "impetus"}
    model, config = quantize_model(loaded.model, config, group_size=64, bits=8)
    target = tmp_path_factory.mktemp("mlx-community") / "SmolLM2-135M-Instruct-8bit"
    save(target, source, model, loaded.tokenizer, config)
    return target


def test_folder_has_the_mlx_community_layout(mlx_community_folder):
    names = {p.name for p in mlx_community_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert resolve_model(str(mlx_community_folder), mlx_community_folder.parent) == mlx_community_folder


def test_server_serves_a_model_folder_by_path(mlx_community_folder, data_dir, tmp_path):
    port = free_port()
    process = start_server(port, tmp_path / "server.log",
                           {"IMPETUS_DATA_DIR": str(data_dir), "IMPETUS_MODEL": str(mlx_community_folder)})
    base = f"http://127.0.0.1:{port}"
    try:
        models = httpx.get(f"{base}/v1/models", timeout=10).json()["data"]
        assert "SmolLM2-135M-Instruct-8bit" in [m["id"] for m in models if m["loaded"]]
        reply = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
            "model": "SmolLM2-135M-Instruct-8bit", "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}).json()
    finally:
        stop_server(process)
    assert "Paris" in reply["choices"][0]["message"]["content"]
