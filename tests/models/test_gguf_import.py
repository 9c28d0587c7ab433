"""The GGUF importer against an independent reader of the same file."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from impetus.models.gguf import GGUFImportError, build_config, import_gguf
from impetus.models.loader import load
from impetus.models.store import DEFAULT_MODEL

PROMPT = "The capital of France is"


def greedy(model, tokens: list[int], steps: int) -> list[int]:
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(mx.array([tokens]), cache=cache)
    out = []
    for _ in range(steps):
        token = int(mx.argmax(logits[0, -1]).item())
        out.append(token)
        logits = model(mx.array([[token]]), cache=cache)
    return out


def reference_model(path):
    """The GGUF at `path` read with ggml's own Python reader (gguf-py),
    dequantized in NumPy, in mlx-lm's llama: shares no code with the importer."""
    gguf = pytest.importorskip("gguf")
    from mlx_lm.models import llama

    reader = gguf.GGUFReader(str(path))

    def field(name):
        f = reader.fields[name]
        return f.parts[f.data[0]].tolist()[0]

    names = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    weights = []
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{names[parts[2]]}.weight"
        else:
            name = f"{names[parts[0]]}.weight"
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        weights.append((name, mx.array(array)))
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=field("llama.embedding_length"),
        num_hidden_layers=field("llama.block_count"),
        intermediate_size=field("llama.feed_forward_length"),
        num_attention_heads=field("llama.attention.head_count"),
        num_key_value_heads=field("llama.attention.head_count_kv"),
        rms_norm_eps=field("llama.attention.layer_norm_rms_epsilon"),
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        rope_theta=field("llama.rope.freq_base"),
        rope_traditional=True,
        tie_word_embeddings=not any(name == "lm_head.weight" for name, _ in weights),
    )
    model = llama.Model(args)
    model.load_weights(weights)
    mx.eval(model.parameters())
    return model


@pytest.fixture(scope="module")
def default_reference(default_gguf):
    return reference_model(default_gguf)


def test_import_writes_an_mlx_model_folder(data_dir):
    folder = data_dir / "models" / DEFAULT_MODEL
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["rope_traditional"] is True
    assert config["tie_word_embeddings"] is True
    # Q4_1 file: 4-bit layers, but the embedding is stored as Q8_0.
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    assert tokenizer_config["eos_token"] == "<|im_end|>"


@pytest.mark.slow
@pytest.mark.parametrize("weights_dtype", ["stored", "float32"])
def test_converted_model_matches_the_gguf_read_directly(data_dir, default_reference, weights_dtype):
    converted = load(data_dir / "models" / DEFAULT_MODEL, weights_dtype=weights_dtype)
    prompt = converted.tokenizer.encode(PROMPT)
    expected = greedy(default_reference, prompt, 12)
    assert greedy(converted.model, prompt, 12) == expected
    assert converted.tokenizer.decode(expected).startswith(" Paris")


def test_tokenizer_rebuilt_from_metadata_round_trips(loaded_model):
    tokenizer = loaded_model.tokenizer
    text = "Héllo wörld 12345 — code: def f(x): return x**2\n\ttabs 🙂"
    tokens = tokenizer.encode(text)
    assert tokenizer.decode(tokens) == text
    # SmolLM's pre-tokenizer splits digits one by one.
    assert len(tokenizer.encode("12345")) == 5
    # Control tokens are single tokens, not spelled out.
    assert tokenizer.encode("<|im_start|>") == [1]


@pytest.mark.slow
def test_default_model_answers_the_capital_of_france(loaded_model):
    from mlx_lm import generate

    tokenizer = loaded_model.tokenizer
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    answer = generate(loaded_model.model, tokenizer, prompt, max_tokens=20, verbose=False)
    assert "Paris" in answer


def test_not_a_gguf_is_a_clear_error_and_leaves_nothing(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all" * 100)
    models = tmp_path / "models"
    with pytest.raises(GGUFImportError, match="cannot read bogus.gguf as GGUF"):
        import_gguf(bogus, models, name="bogus")
    assert not (models / "bogus").exists()
    assert not models.exists() or list(models.iterdir()) == []


def test_existing_model_is_not_overwritten_without_force(default_gguf, data_dir):
    with pytest.raises(GGUFImportError, match="already exists"):
        import_gguf(default_gguf, data_dir / "models", name=DEFAULT_MODEL)


def test_non_llama_architecture_is_refused():
    with pytest.raises(GGUFImportError, match="only llama-architecture"):
        build_config({"general.architecture": "qwen2"}, {}, {})


@pytest.mark.parametrize(
    "weight_type, tied",
    [("F32", True), ("F16", True), ("Q4_0", True), ("Q4_1", False), ("Q8_0", False)],
)
def test_every_supported_tensor_type_imports_faithfully(tmp_path, weight_type, tied):
    """Tiny random llamas written by gguf-py in each tensor type, tied and untied output."""
    from tiny_gguf import write_tiny_llama

    path = write_tiny_llama(tmp_path / f"tiny-{weight_type}.gguf", weight_type, tied=tied)
    folder = import_gguf(path, tmp_path / "models", name="tiny")
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied
    quantized = weight_type.startswith("Q")
    assert ("quantization" in config) is quantized
    if quantized:
        assert config["quantization"]["bits"] == {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}[weight_type]

    reference = reference_model(path)
    prompt = [5, 17, 42, 7, 99]
    expected_logits = reference(mx.array([prompt]))
    # Dequantized to float32, the import computes what the GGUF holds.
    exact = load(folder, weights_dtype="float32")
    assert mx.abs(exact.model(mx.array([prompt])) - expected_logits).max().item() < 1e-4
    assert greedy(exact.model, prompt, 10) == greedy(reference, prompt, 10)
    # Kept quantized, MLX's quantized kernels accumulate differently: close, not
    # identical (random tiny models have near-ties, so no token comparison).
    stored = load(folder, weights_dtype="stored")
    assert mx.abs(stored.model(mx.array([prompt])) - expected_logits).max().item() < 0.1
    tokenizer = exact.tokenizer
    assert tokenizer.decode(tokenizer.encode("hello there, the bell")) == "hello there, the bell"
    assert tokenizer.encode(" the") == [tokenizer.convert_tokens_to_ids("Ġthe")]  # merges applied
