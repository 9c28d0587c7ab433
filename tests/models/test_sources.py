"""`impetus models import SOURCE` and `impetus models discover` against fake
Ollama, LM Studio and Hugging Face cache trees under a temporary HOME, laid out
as those programs lay them out, with real (small) GGUF and MLX files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from impetus.models import sources
from impetus.models.gguf import GGUFImportError, import_gguf
from impetus.models.registry import Registry

from tiny_gguf import write_tiny

# A Modelfile's PARAMETERs as Ollama stores them: sampling, and options the engine decides itself.
OLLAMA_PARAMS = {"temperature": 0.6, "stop": ["<|im_end|>", "User:"], "num_ctx": 4096, "repeat_last_n": 64}


def blob_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """~/.ollama with qwen-tiny:latest (a qwen2 GGUF blob, a Go template layer),
    ~/.lmstudio with a GGUF repo and an MLX repo, and an HF cache snapshot."""
    home = tmp_path / "home"
    gguf = write_tiny(tmp_path / "qwen.gguf", "qwen2", "Q8_0",
                      meta={"general.sampling.temp": 0.9, "general.sampling.top_k": 40})
    ollama = home / ".ollama" / "models"
    (ollama / "blobs").mkdir(parents=True)
    digest = blob_digest(gguf)
    shutil.copy(gguf, ollama / "blobs" / f"sha256-{digest}")
    (ollama / "blobs" / "sha256-0000").write_text("{{ .Prompt }}")
    (ollama / "blobs" / "sha256-1111").write_text(json.dumps(OLLAMA_PARAMS))
    manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / "qwen-tiny" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}",
         "size": gguf.stat().st_size},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:0000", "size": 13},
        {"mediaType": "application/vnd.ollama.image.params", "digest": "sha256:1111", "size": 80}]}))

    studio = home / ".lmstudio" / "models"
    (studio / "lmstudio-community" / "gemma-tiny-GGUF").mkdir(parents=True)
    write_tiny(studio / "lmstudio-community" / "gemma-tiny-GGUF" / "gemma-tiny-Q4_0.gguf", "gemma3", "Q4_0",
               chat_template=False)
    mlx_repo = studio / "mlx-community" / "llama-tiny-4bit"
    import_gguf(write_tiny(tmp_path / "llama.gguf", "llama", "Q4_0"), tmp_path / "built", name="llama-tiny")
    shutil.copytree(tmp_path / "built" / "llama-tiny", mlx_repo)

    repo = home / ".cache" / "huggingface" / "hub" / "models--mlx-community--phi-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    import_gguf(write_tiny(tmp_path / "phi.gguf", "phi3", "Q8_0"), tmp_path / "built", name="phi-tiny")
    shutil.copytree(tmp_path / "built" / "phi-tiny", repo / "snapshots" / "0123abcd")
    monkeypatch.setenv("HOME", str(home))
    for variable in ("OLLAMA_MODELS", "HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    return home


def cli(home, data_dir, *args):
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "impetus.cli.main", "models", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_discover_finds_all_three_places(home, tmp_path):
    found = {d.source: d for d in sources.discover(budget_bytes=10**9, serve_float32=True)}
    assert set(found) == {"ollama:qwen-tiny:latest", "lmstudio:lmstudio-community/gemma-tiny-GGUF",
                          "lmstudio:mlx-community/llama-tiny-4bit", "hf:mlx-community/phi-tiny"}
    assert found["ollama:qwen-tiny:latest"].architecture == "qwen2"
    assert found["ollama:qwen-tiny:latest"].type == "Q8_0" and found["ollama:qwen-tiny:latest"].fits
    assert found["lmstudio:lmstudio-community/gemma-tiny-GGUF"].kind == "gguf"
    assert found["hf:mlx-community/phi-tiny"].kind == "mlx"
    assert found["hf:mlx-community/phi-tiny"].architecture == "phi3"
    assert not sources.discover(budget_bytes=1, serve_float32=True)[0].fits
    listed = cli(home, tmp_path / "data", "discover", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {d["source"] for d in json.loads(listed.stdout)} == set(found)


def test_import_by_ollama_name_then_again_is_a_no_op(home, tmp_path):
    data = tmp_path / "data"
    first = cli(home, data, "import", "ollama:qwen-tiny", "--kv-bits", "8")
    assert first.returncode == 0, first.stderr
    folder = data / "models" / "qwen-tiny"
    assert first.stdout.strip() == str(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["quantization"]["bits"] == 8
    # Served with 8-bit KV caches (engine.kv_quant), over the server's setting.
    assert config["impetus"]["kv_bits"] == 8 and Registry(data / "models").find("qwen-tiny").kv_bits == 8
    assert "tensors" in first.stderr  # progress lines
    again = cli(home, data, "import", "ollama:qwen-tiny:latest")
    assert again.returncode == 0 and "already imported" in again.stderr
    listing = cli(home, data, "import", "ollama:")
    assert listing.returncode == 0 and "qwen-tiny:latest" in listing.stdout


def test_defaults_come_from_the_manifest_the_gguf_and_an_alias_in_that_order(home, tmp_path):
    data = tmp_path / "data"
    assert cli(home, data, "import", "ollama:qwen-tiny").returncode == 0
    registry = Registry(data / "models")
    shown = registry.find("qwen-tiny").defaults.describe(server_temperature=1.0)
    assert shown == {"temperature": {"value": 0.6, "source": "ollama"},  # over the GGUF's 0.9
                     "top_k": {"value": 40, "source": "gguf"},
                     "stop": {"value": ["<|im_end|>", "User:"], "source": "ollama"}}
    made = cli(home, data, "alias", "qwen-cold", "qwen-tiny", "--temperature", "0", "--top-p", "0.5")
    assert made.returncode == 0, made.stderr
    assert registry.find("qwen-cold").defaults.describe() == {
        "temperature": {"value": 0.0, "source": "alias"}, "top_p": {"value": 0.5, "source": "alias"},
        "top_k": {"value": 40, "source": "gguf"}, "stop": {"value": ["<|im_end|>", "User:"], "source": "ollama"}}
    bad = cli(home, data, "alias", "qwen-hot", "qwen-tiny", "--temperature", "3")
    assert bad.returncode != 0 and "temperature 3.0 is out of bounds" in bad.stderr
    assert "qwen-hot" not in registry.aliases()


def test_missing_blob_and_corrupt_manifest_are_clear_errors_that_write_nothing(home, tmp_path):
    ollama = home / ".ollama" / "models"
    manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / "qwen-tiny" / "latest"
    good = manifest.read_text()
    registry = Registry(tmp_path / "data" / "models")

    blob = next(p for p in (ollama / "blobs").iterdir() if p.stat().st_size > 100)
    blob.rename(blob.with_suffix(".moved"))
    with pytest.raises(GGUFImportError, match="is missing from"):
        sources.import_source("ollama:qwen-tiny", registry)
    blob.with_suffix(".moved").rename(blob)

    manifest.write_text(good[: len(good) // 2])
    with pytest.raises(GGUFImportError, match="manifest .* is damaged"):
        sources.import_source("ollama:qwen-tiny", registry)
    manifest.write_text(good)
    with pytest.raises(GGUFImportError, match=r"Ollama has no model nope:latest .*there: qwen-tiny:latest"):
        sources.import_source("ollama:nope", registry)
    assert not registry.models_dir.exists() or not [p for p in registry.models_dir.iterdir()]
    failed = cli(home, tmp_path / "data", "import", "ollama:nope")
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1


def test_lmstudio_gguf_is_converted_and_mlx_folders_are_served_in_place(home, tmp_path):
    registry = Registry(tmp_path / "data" / "models")
    notes = []
    resolved, folder = sources.import_source("lmstudio:lmstudio-community/gemma-tiny-GGUF", registry,
                                             progress=notes.append)
    assert resolved.kind == "gguf" and json.loads((folder / "config.json").read_text())["model_type"] == "gemma3_text"
    assert registry.find("gemma-tiny-GGUF").metadata.chat_template is False  # the file has none

    resolved, path = sources.import_source("lmstudio:mlx-community/llama-tiny-4bit", registry)
    entry = registry.find("llama-tiny-4bit")
    assert entry.path == path == home / ".lmstudio" / "models" / "mlx-community" / "llama-tiny-4bit"
    assert not (registry.models_dir / "llama-tiny-4bit").exists()  # nothing copied

    _, path = sources.import_source("hf:mlx-community/phi-tiny", registry, name="phi")
    assert registry.find("phi").path.name == "0123abcd"


def test_chat_template_attached_to_an_imported_model(home, tmp_path):
    registry = Registry(tmp_path / "data" / "models")
    sources.import_source("lmstudio:lmstudio-community/gemma-tiny-GGUF", registry, name="g")
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    done = cli(home, tmp_path / "data", "alias", "g", "--chat-template", str(template))
    assert done.returncode == 0, done.stderr
    assert registry.find("g").metadata.chat_template is True
    assert (registry.models_dir / "g" / "chat_template.jinja").read_text() == template.read_text()


@pytest.mark.slow
def test_an_import_killed_midway_leaves_no_model_and_the_next_one_cleans_up(gemma_gguf, default_gguf, tmp_path):
    """kill -9 while tensors are converted: no model folder appears (only a hidden
    staging folder, which nothing lists), and the next import of that name
    removes it (the default model's GGUF: a third of Gemma's conversion time)."""
    import signal
    import time

    data = tmp_path / "data"
    process = subprocess.Popen([sys.executable, "-m", "impetus.cli.main", "models", "import", str(gemma_gguf),
                                "--name", "g", "--data-dir", str(data)], stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "tensors" in line and "/236" in line:  # converting
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    models = data / "models"
    assert not (models / "g").exists()
    assert [p.name for p in models.iterdir() if p.name.startswith(".g.")]  # the staging folder
    assert "g " not in cli(tmp_path, data, "list").stdout
    done = cli(tmp_path, data, "import", str(default_gguf), "--name", "g")
    assert done.returncode == 0, done.stderr
    assert (models / "g" / "config.json").is_file()
    assert not [p.name for p in models.iterdir() if p.name.startswith(".g.")]
