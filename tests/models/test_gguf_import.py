"""The GGUF importer against an independent NumPy forward pass over the same file
(tests/gguf_reference.py: gguf-py's dequantization, llama.cpp's graphs)."""

from __future__ import annotations

import dataclasses
import json

import mlx.core as mx
import numpy as np
import pytest

from impetus.models.gguf import GGUFImportError, Options, import_gguf
from impetus.models.loader import load
from impetus.models.store import DEFAULT_MODEL

from gguf_reference import Reference, softmax
from tiny_gguf import ARCHES, EXPERT_FFN, EXPERTS, EXPERTS_USED, MOE, write_tiny

PROMPT = [5, 17, 42, 7, 99, 3, 8, 11]
# Every type gguf-py can also write, and IQ4_NL (random blocks); the K-quants
# come from the real Gemma file below.
TINY_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"]


def logits(model, tokens) -> np.ndarray:
    return np.array(model(mx.array([tokens]))[0].astype(mx.float32))


def greedy(model, tokens: list[int], steps: int) -> list[int]:
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    out = model(mx.array([tokens]), cache=cache)
    generated = []
    for _ in range(steps):
        token = int(mx.argmax(out[0, -1]).item())
        generated.append(token)
        out = model(mx.array([[token]]), cache=cache)
    return generated


def reference_greedy(reference: Reference, tokens: list[int], steps: int) -> list[int]:
    tokens = list(tokens)
    for _ in range(steps):
        tokens.append(int(reference.logits(tokens)[-1].argmax()))
    return tokens[-steps:]


def close(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference, relative to the largest logit."""
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("weight_type", TINY_TYPES)
@pytest.mark.parametrize("arch", ARCHES)
def test_every_type_and_architecture_computes_what_the_file_holds(tmp_path, arch, weight_type):
    """Dequantized to float32, each import gives the reference's logits (to
    1e-5 of the largest logit: float32 against float64); Q4_0, Q4_1 and Q8_0
    are repacked without loss, so their default import does too."""
    path = write_tiny(tmp_path / f"{arch}-{weight_type}.gguf", arch, weight_type, tied=weight_type != "Q8_0")
    expected = Reference(path).logits(PROMPT)

    # gpt-oss's YaRN scales q and k by 1 + 0.1 ln(factor), which grows float32's rounding.
    bound = 5e-5 if arch == "gpt-oss" else 1e-5
    exact = import_gguf(path, tmp_path / "models", name="f32", options=Options(dtype="float32"))
    served = logits(load(exact, weights_dtype="float32").model, PROMPT)
    assert close(served, expected) < bound
    assert (served.argmax(-1) == expected.argmax(-1)).all()

    default = import_gguf(path, tmp_path / "models", name="default")
    config = json.loads((default / "config.json").read_text())
    bits = (config.get("quantization") or {}).get("bits")
    assert bits == {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "IQ4_NL": 4}.get(weight_type)
    if weight_type in ("Q4_0", "Q4_1", "Q8_0", "F32", "F16", "BF16"):
        assert close(logits(load(default, weights_dtype="float32").model, PROMPT), expected) < bound
    # Kept quantized, MLX's kernels accumulate differently: close, not identical.
    # (Q5 and IQ values are re-quantized: random tiny models amplify that; see the Gemma tests.)
    if weight_type != "BF16" and not weight_type.startswith(("Q5", "IQ")):
        assert close(logits(load(default, weights_dtype="stored").model, PROMPT), expected) < 0.05

    tokenizer = load(exact, weights_dtype="float32").tokenizer
    text = "hello there, the bell é"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("arch", MOE)
def test_mixtures_of_experts_generate_the_references_tokens(tmp_path, arch):
    """Through the KV cache, token by token: gpt-oss's sliding window (4, shorter
    than the prompt) and its sinks, the routers' choices at every step."""
    path = write_tiny(tmp_path / f"{arch}.gguf", arch, "F32", seed=3)
    reference = Reference(path)
    folder = import_gguf(path, tmp_path / "models", name=arch)
    config = json.loads((folder / "config.json").read_text())
    assert config["num_experts_per_tok"] == EXPERTS_USED
    assert greedy(load(folder, weights_dtype="float32").model, PROMPT, 6) == reference_greedy(reference, PROMPT, 6)


def mxfp4_blocks(rng, shape) -> np.ndarray:
    """MXFP4 blocks built by hand from the format (ggml-common.h block_mxfp4): an
    E8M0 exponent, then 16 bytes of E2M1 codes; every code and sign appears."""
    blocks = int(np.prod(shape)) // 32
    exponents = rng.integers(118, 130, size=(blocks, 1), dtype=np.uint8)
    codes = rng.integers(0, 256, size=(blocks, 16), dtype=np.uint8)
    return np.concatenate([exponents, codes], axis=1).reshape(*shape[:-1], -1)


def test_mxfp4_experts_are_repacked_bit_exactly_into_mlx_mxfp4(tmp_path):
    from gguf import GGMLQuantizationType, quants

    from impetus.models.gguf.reader import GGUFFile
    from impetus.models.gguf.repack import repack_mxfp4

    rng = np.random.default_rng(0)
    raw = mxfp4_blocks(rng, (EXPERTS, EXPERT_FFN, 64))
    expected = quants.dequantize(raw, GGMLQuantizationType.MXFP4)  # gguf-py's own reading of the blocks
    path = write_tiny(tmp_path / "oss.gguf", "gpt-oss", "F32", expert_type="MXFP4")
    tensor = GGUFFile(path).tensors["blk.0.ffn_gate_exps.weight"]
    assert tensor.type == "MXFP4" and tensor.shape == (EXPERTS, EXPERT_FFN, 64)
    tensor = dataclasses.replace(tensor, _raw=type("Raw", (), {"data": raw})())
    weight, scales = repack_mxfp4(tensor)
    assert weight.dtype == np.uint32 and scales.dtype == np.uint8 and scales.shape == (EXPERTS, EXPERT_FFN, 2)
    values = mx.dequantize(mx.array(weight), mx.array(scales), group_size=32, bits=4, mode="mxfp4")
    assert np.array_equal(np.array(values.astype(mx.float32)), expected)  # not close: equal

    reference = Reference(path)
    expected_logits = reference.logits(PROMPT)
    folder = import_gguf(path, tmp_path / "models", name="oss")
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["model.layers.0.mlp.experts.gate_proj"] == {"group_size": 32, "bits": 4,
                                                                              "mode": "mxfp4"}
    for weights in ("stored", "float32"):  # MLX's mxfp4 kernels, and dequantized on a CPU
        assert close(logits(load(folder, weights_dtype=weights).model, PROMPT), expected_logits) < 5e-5
    assert greedy(load(folder, weights_dtype="float32").model, PROMPT, 6) == reference_greedy(reference, PROMPT, 6)
    # Asked for floats (or other bits), the experts are dequantized by gguf-py.
    floats = import_gguf(path, tmp_path / "models", name="oss-f32", options=Options(dtype="float32"))
    assert "quantization" not in json.loads((floats / "config.json").read_text())
    assert close(logits(load(floats, weights_dtype="stored").model, PROMPT), expected_logits) < 5e-5


@pytest.mark.parametrize("weight_type", ["Q5_0", "Q5_1"])
def test_five_bit_sources_at_eight_bits_stay_close(tmp_path, weight_type):
    path = write_tiny(tmp_path / "t.gguf", "qwen3", weight_type)
    expected = Reference(path).logits(PROMPT)
    folder = import_gguf(path, tmp_path / "models", name="t8", options=Options(bits=8))
    assert json.loads((folder / "config.json").read_text())["quantization"]["bits"] == 8
    assert close(logits(load(folder, weights_dtype="float32").model, PROMPT), expected) < 0.05


# -- the default model (SmolLM2 135M, Q4_1 with a Q8_0 embedding) -------------------


def test_import_writes_an_mlx_model_folder(data_dir):
    folder = data_dir / "models" / DEFAULT_MODEL
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["rope_traditional"] is True
    assert config["tie_word_embeddings"] is True
    # Q4_1 file: 4-bit layers, but the embedding is stored as Q8_0 and stays 8-bit.
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    assert tokenizer_config["eos_token"] == "<|im_end|>"


@pytest.fixture(scope="module")
def default_reference(default_gguf):
    """The default model's GGUF read directly, once for both weight choices."""
    return Reference(default_gguf, np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("weights_dtype", ["stored", "float32"])
def test_default_model_matches_the_gguf_read_directly(data_dir, default_reference, weights_dtype):
    converted = load(data_dir / "models" / DEFAULT_MODEL, weights_dtype=weights_dtype)
    prompt = converted.tokenizer.encode("The capital of France is")
    reference = default_reference
    expected = reference_greedy(reference, prompt, 8)
    assert greedy(converted.model, prompt, 8) == expected
    assert converted.tokenizer.decode(expected).startswith(" Paris")
    if weights_dtype == "float32":  # Q4_1 and Q8_0 are repacked without loss
        assert close(logits(converted.model, prompt), reference.logits(prompt)) < 1e-5


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


# -- Gemma 3 270M Q4_K_M: the K-quants, SentencePiece, sliding windows ----------------


@pytest.fixture(scope="module")
def gemma_reference(gemma_gguf):
    return Reference(gemma_gguf, np.float32)


@pytest.mark.slow
def test_gemma_k_quants_dequantize_to_what_the_file_holds(gemma_gguf, gemma_reference, tmp_path):
    folder = import_gguf(gemma_gguf, tmp_path, name="gemma-f32", options=Options(dtype="float32"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["sliding_window"] == 512
    assert config["impetus"]["source_type"] == "Q5_0"
    model = load(folder, weights_dtype="float32")
    prompt = model.tokenizer.encode("The capital of France is the city of")
    assert prompt[0] == 2  # <bos>, as add_bos_token says
    assert close(logits(model.model, prompt), gemma_reference.logits(prompt)) < 1e-5
    assert greedy(model.model, prompt, 4) == reference_greedy(gemma_reference, prompt, 4)


def test_gemma_default_import_stays_close(gemma_models, gemma_reference):
    """The default import re-quantizes the Q5_0 and Q4_K layers to MLX 5-bit
    and keeps 8 bits for the Q8_0/Q6_K ones. Over a mixed text it keeps
    the file's top token at most positions, and the greedy answer."""
    folder = gemma_models / "models" / "gemma3-270m"
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["bits"] == 5  # the file is mostly Q5_0
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8  # Q8_0 in the file
    assert config["quantization"]["model.layers.0.mlp.down_proj"]["bits"] == 8  # Q6_K in the file
    assert "model.layers.0.self_attn.o_proj" not in config["quantization"]  # Q4_K: the main 5 bits
    model = load(folder, weights_dtype="float32")
    text = ("The history of France spans thousands of years. Paris, its capital, sits on the Seine. "
            "def add(a, b):\n    return a + b\nLes citoyens ont voté pour la première fois.")
    tokens = model.tokenizer.encode(text)
    actual, expected = logits(model.model, tokens), gemma_reference.logits(tokens)
    p, q = softmax(expected), softmax(actual)
    kl = (p * (np.log(p + 1e-30) - np.log(q + 1e-30))).sum(-1).mean()
    assert kl < 0.08 and (actual.argmax(-1) == expected.argmax(-1)).mean() > 0.85
    prompt = model.tokenizer.encode("The capital of France is the city of")
    assert model.tokenizer.decode(greedy(model.model, prompt, 3)).startswith(" Paris")


def test_sentencepiece_tokenizer_matches_llama_cpp_merging(gemma_models, gemma_reference):
    """Against a direct implementation of llama.cpp's SentencePiece tokenizer:
    user-defined pieces whole, then join the best-scored adjacent pair until
    none is a piece; bytes for the rest. The vocabulary is the file's, as the
    reference read it."""
    tokens = gemma_reference.meta["tokenizer.ggml.tokens"]
    scores = gemma_reference.meta["tokenizer.ggml.scores"]
    types = gemma_reference.meta["tokenizer.ggml.token_type"]
    piece = {t: i for i, t in enumerate(tokens) if types[i] == 1}

    user = sorted((t for i, t in enumerate(tokens) if types[i] == 4), key=len, reverse=True)

    def spm(text: str) -> list[int]:
        # llama.cpp matches user-defined pieces (Gemma's newline runs) first, longest first.
        for token in user:
            if token in text:
                before, _, after = text.partition(token)
                return spm(before) + [tokens.index(token)] + spm(after)
        return merge(text)

    def merge(text: str) -> list[int]:
        symbols = list(text.replace(" ", "▁"))
        while True:
            best = None
            for i in range(len(symbols) - 1):
                joined = piece.get(symbols[i] + symbols[i + 1])
                if joined is not None and (best is None or scores[joined] > scores[best[1]]):
                    best = (i, joined)
            if best is None:
                break
            i, _ = best
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        out = []
        for s in symbols:
            out += [piece[s]] if s in piece else [tokens.index(f"<0x{b:02X}>") for b in s.encode()]
        return out

    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(gemma_models / "models" / "gemma3-270m")  # as the loader does, without the weights
    for text in ["Héllo wörld — naïve café", "emoji 🙂🎉 and 日本語のテキスト",
                 "def f(x):\n    return x**2  # code", "  two spaces, CamelCase_snake"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == spm(text), text
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("hi")[0] == 2  # add_bos_token
    # A user-defined piece ("\n\n") is matched whole, a control one is special.
    assert tokenizer.encode("a\n\nb", add_special_tokens=False)[1] == tokens.index("\n\n")
    assert tokenizer.encode("<start_of_turn>", add_special_tokens=False) == [tokens.index("<start_of_turn>")]


# -- errors ----------------------------------------------------------------------------


def test_not_a_gguf_is_a_clear_error_and_leaves_nothing(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all" * 100)
    models = tmp_path / "models"
    with pytest.raises(GGUFImportError, match="cannot read bogus.gguf as GGUF"):
        import_gguf(bogus, models, name="bogus")
    assert not models.exists() or list(models.iterdir()) == []


def test_truncated_gguf_is_a_one_line_error(tmp_path):
    whole = write_tiny(tmp_path / "whole.gguf", "llama", "Q8_0")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with pytest.raises(GGUFImportError) as error:
        import_gguf(cut, tmp_path / "models", name="cut")
    assert "truncated" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    path = write_tiny(tmp_path / "t.gguf", "llama", "F32")
    data = path.read_bytes().replace(b"llama.", b"falco.").replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama",
                                                                    b"\x05\x00\x00\x00\x00\x00\x00\x00falco")
    other = tmp_path / "falcon.gguf"
    other.write_bytes(data)
    with pytest.raises(GGUFImportError, match=r"architecture 'falco' is not supported; supported: llama, "
                                              r"mistral, qwen2, qwen3, phi3, gemma3, qwen3moe, gpt-oss"):
        import_gguf(other, tmp_path / "models", name="x")


def test_same_file_twice_is_a_no_op_and_another_file_needs_force(default_gguf, data_dir, tmp_path):
    folder = data_dir / "models" / DEFAULT_MODEL
    before = (folder / "config.json").stat().st_mtime_ns
    seen = []
    assert import_gguf(default_gguf, data_dir / "models", name=DEFAULT_MODEL, progress=seen.append) == folder
    assert (folder / "config.json").stat().st_mtime_ns == before
    assert seen[-1].stage == "skipped"
    other = write_tiny(tmp_path / "other.gguf", "llama", "F32")
    with pytest.raises(GGUFImportError, match="already exists"):
        import_gguf(other, data_dir / "models", name=DEFAULT_MODEL)


def test_import_reports_progress_and_refuses_a_full_disk(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    path = write_tiny(tmp_path / "t.gguf", "qwen2", "Q8_0")
    seen = []
    import_gguf(path, tmp_path / "models", name="t", progress=seen.append)
    converting = [p for p in seen if p.stage == "converting"]
    assert converting[-1].tensors_done == converting[-1].tensors_total > 0
    assert converting[-1].bytes_written > 0 and seen[-1].stage == "done"

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(GGUFImportError, match="not enough disk space"):
        import_gguf(path, tmp_path / "models", name="t2")
    assert not (tmp_path / "models" / "t2").exists()


def test_a_second_import_of_the_same_name_meanwhile_is_refused(tmp_path):
    """The lock an import holds (as another process would) refuses a second one."""
    import fcntl

    path = write_tiny(tmp_path / "t.gguf", "llama", "Q8_0")
    (tmp_path / "models" / ".locks").mkdir(parents=True)
    with (tmp_path / "models" / ".locks" / "t").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(GGUFImportError, match="an import of 't' is already running"):
            import_gguf(path, tmp_path / "models", name="t")
    assert import_gguf(path, tmp_path / "models", name="t").is_dir()  # released: it goes through


def test_a_large_model_is_written_in_shards_that_load(tmp_path, monkeypatch):
    from impetus.models.gguf import convert

    monkeypatch.setattr(convert, "SHARD_BYTES", 20_000)  # a 7B model's 2 GiB shards, scaled to a tiny one
    path = write_tiny(tmp_path / "t.gguf", "qwen3", "F32")
    folder = import_gguf(path, tmp_path / "models", name="t")
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    served = logits(load(folder, weights_dtype="float32").model, PROMPT)
    assert close(served, Reference(path).logits(PROMPT)) < 1e-5
